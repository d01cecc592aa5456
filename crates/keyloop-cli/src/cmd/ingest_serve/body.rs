//! Request bodies as the endpoints hold them: one buffer, zeroized when dropped (a detector's
//! body is full of plaintext values), and the words for a body that is not what was expected,
//! which never quote it. The copies hyper made while reading the request are out of reach:
//! its read buffer is reused and freed by hyper.

use super::reply::Reply;
use axum::http::{HeaderMap, StatusCode, header};
use zeroize::Zeroizing;

/// A request body, zeroized on drop.
pub(crate) type Body = Zeroizing<Vec<u8>>;

/// Reads a request body of at most `max_body_mib` MiB, or gives the answer for one that
/// cannot be read: 413 over the limit (told by `Content-Length` before anything is read, or
/// found while reading), 400 when it breaks off. Called once the headers were checked, so a
/// request its sender cannot authenticate is refused without its body being buffered.
pub(crate) async fn read(
    headers: &HeaderMap,
    body: axum::body::Body,
    max_body_mib: u32,
) -> Result<Body, Reply> {
    let limit = usize::try_from(max_body_mib).unwrap_or(usize::MAX) << 20;
    let too_large = || {
        Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is over the limit of {max_body_mib} MiB; send smaller batches, or \
                 raise --max-body-mib"
            ),
        )
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match axum::body::to_bytes(body, limit).await {
        // Without a copy when the body came in one piece.
        Ok(bytes) => Ok(Zeroizing::new(Vec::from(bytes))),
        Err(e)
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) =>
        {
            Err(too_large())
        }
        Err(_) => Err(Reply::error(
            StatusCode::BAD_REQUEST,
            "the body could not be read to its end",
        )),
    }
}

/// What is wrong with a body serde_json could not parse, by position. Syntax and end-of-input
/// messages are fixed phrases; data errors can quote the input (`invalid type: string "…"`),
/// so their text is never passed on.
pub(crate) fn json_problem(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let position = format!(" at line {} column {}", err.line(), err.column());
    let phrase = match err.classify() {
        Category::Syntax | Category::Eof => {
            let full = err.to_string();
            full.strip_suffix(&position)
                .map_or_else(|| "malformed JSON".to_owned(), str::to_owned)
        }
        Category::Data => "unexpected value".to_owned(),
        Category::Io => "unreadable input".to_owned(),
    };
    format!("the body is not valid JSON: {phrase}{position}")
}

/// The kind of a JSON value, for messages (`a number`, `an object`): the parsers' own.
pub(crate) use keyloop_core::ingest::json_kind as kind;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bodies_over_the_limit_are_413_whether_announced_or_not() {
        let mib = 1 << 20;
        let fits = read(&HeaderMap::new(), vec![b'x'; mib].into(), 1).await;
        assert_eq!(fits.unwrap().len(), mib);
        let over = read(&HeaderMap::new(), vec![b'x'; mib + 1].into(), 1).await;
        let reply = format!("{:?}", over.expect_err("over the limit"));
        assert!(reply.contains("413"), "{reply}");
        let mut announced = HeaderMap::new();
        announced.insert(header::CONTENT_LENGTH, "99999999".parse().unwrap());
        let refused = read(&announced, axum::body::Body::empty(), 1).await;
        assert!(format!("{:?}", refused.expect_err("announced")).contains("413"));
    }

    #[test]
    fn json_problems_name_the_position_and_never_the_text() {
        let planted = "FAKE-body-0001-never-echoed";
        for text in [
            format!(r#"[{{"token":"{planted}" "#),
            format!(r#"[{{"token":"{planted}"}}] {planted}"#),
            planted.to_owned(),
            format!("[\"{planted}\u{1}\"]"),
        ] {
            let err = serde_json::from_str::<serde_json::Value>(&text).expect_err("malformed");
            let message = json_problem(&err);
            assert!(
                message.starts_with("the body is not valid JSON: "),
                "{message}"
            );
            assert!(message.contains(" at line 1 column "), "{message}");
            assert!(!message.contains("FAKE-body"), "{message}");
        }
    }
}
