//! Request bodies as the endpoints hold them: one buffer, zeroized when dropped (a detector's
//! body is full of plaintext values), and the words for a body that is not what was expected,
//! which never quote it. The copies hyper made while reading the request are out of reach:
//! its read buffer is reused and freed by hyper.

use super::reply::Reply;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use zeroize::Zeroizing;

/// A request body, zeroized on drop.
pub(crate) type Body = Zeroizing<Vec<u8>>;

/// The body axum read, or the answer for one that could not be read: 413 over the limit.
pub(crate) fn take(body: Result<Bytes, BytesRejection>, max_body_mib: u32) -> Result<Body, Reply> {
    match body {
        // Without a copy when the buffer is this request's alone, as it is here.
        Ok(bytes) => Ok(Zeroizing::new(Vec::from(bytes))),
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is over the limit of {max_body_mib} MiB; send smaller batches, or \
                 raise --max-body-mib"
            ),
        )),
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

/// The kind of a JSON value, for messages (`a number`, `an object`).
pub(crate) fn kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
