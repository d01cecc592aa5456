//! Credentials inside a reported value: the password of a URI (`postgres://app:<password>@db`)
//! and of a key=value connection string (`Server=db;Password=…;`, libpq's `password=…`, a
//! query's `?password=…`). Detectors report such a value whole (TruffleHog's `URI` and
//! `Postgres` detectors, secretlint's connection-string rule, Kingfisher's URI rules), while a
//! managed credential's value is only the password in it: a digest of the whole string never
//! matches. Each password found here is handed on as a part of the finding, beside the whole
//! value.
//!
//! Hand-written rather than with a URL parser: detectors find strings no parser takes whole
//! (unencoded `@`, `:` and `/` in passwords, `jdbc:` prefixes, several hosts), and a parser
//! would copy the value into buffers nobody zeroizes. Where a string can be read two ways (an
//! unencoded `@` in the password or in the query) both readings are handed on: a reading that
//! is not a password is a value no credential has, which matches nothing and costs one event.
//! Every copy made here lives in a [`Secret`] or a zeroized buffer.

use crate::secret::Secret;
use percent_encoding::percent_decode_str;
use zeroize::Zeroizing;

/// Where a password was found in a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedded {
    /// The password of `scheme://user:password@host…`, percent-decoded.
    UriPassword,
    /// The `Password=` / `Pwd=` / `password=` of a key=value connection string.
    ConnectionPassword,
}

impl Embedded {
    /// What the part is, in words.
    pub const fn describe(self) -> &'static str {
        match self {
            Self::UriPassword => "the password in a URI",
            Self::ConnectionPassword => "the password in a connection string",
        }
    }
}

/// At most this many passwords are taken from one value (a match is one URI or one
/// connection string, rarely a few).
const MAX_PASSWORDS: usize = 8;

/// The passwords of the URIs and connection strings in `value`, each once, in the order found.
pub(crate) fn passwords(value: &str) -> Vec<(Embedded, Secret)> {
    let mut found: Vec<(Embedded, Secret)> = Vec::new();
    let mut add = |kind: Embedded, password: Secret| {
        if found.len() < MAX_PASSWORDS
            && !password.expose().is_empty()
            && !found.iter().any(|(_, p)| p.expose() == password.expose())
        {
            found.push((kind, password));
        }
    };
    for password in uri_passwords(value) {
        add(Embedded::UriPassword, password);
    }
    for password in connection_passwords(value) {
        add(Embedded::ConnectionPassword, password);
    }
    found
}

/// Characters that end a URI in running text.
fn ends_uri(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>')
}

/// The passwords of every `scheme://user:password@host` in `value`.
fn uri_passwords(value: &str) -> Vec<Secret> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = value[from..].find("://") {
        let start = from + at;
        from = start + 3;
        if !has_scheme(&value[..start]) {
            continue;
        }
        let rest = &value[from..];
        let rest = &rest[..rest.find(ends_uri).unwrap_or(rest.len())];
        for userinfo in userinfo_readings(rest) {
            if let Some((_, password)) = userinfo.split_once(':')
                && !looks_like_port(password)
            {
                out.push(percent_decoded(password));
            }
        }
    }
    out
}

/// Whether `before` ends with a URI scheme (`postgres`, `mongodb+srv`, `jdbc:mysql`).
fn has_scheme(before: &str) -> bool {
    let scheme: Vec<char> = before
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
        .collect();
    scheme.last().is_some_and(char::is_ascii_alphabetic)
}

/// The readings of the user information of a URI whose text after `://` is `rest`: the
/// text before an `@` that is followed by a host. The first such `@` is the reading of an
/// encoded URI; the last one before any `?` or `#` is the reading of a password with an
/// unencoded `@`. A user name never holds `/`, `?` or `#`.
fn userinfo_readings(rest: &str) -> Vec<&str> {
    let mut readings: Vec<&str> = Vec::new();
    for (at, _) in rest.match_indices('@') {
        let userinfo = &rest[..at];
        let after = &rest[at + 1..];
        let host = &after[..after.find(['/', '?', '#']).unwrap_or(after.len())];
        let user = userinfo.split(':').next().unwrap_or_default();
        if !is_host(host) || user.contains(['/', '?', '#']) {
            continue;
        }
        match readings.len() {
            0 => readings.push(userinfo),
            _ if !userinfo.contains(['?', '#']) => {
                if readings.len() == 2 {
                    readings.pop();
                }
                readings.push(userinfo);
            }
            _ => {}
        }
    }
    readings
}

/// `host`, `host:port`, `[v6]:port`, or several of them separated by commas (libpq and MongoDB
/// take a list of hosts).
fn is_host(text: &str) -> bool {
    !text.is_empty()
        && text.split(',').all(|one| {
            let (name, port) = if let Some(v6) = one.strip_prefix('[') {
                let Some((inside, after)) = v6.split_once(']') else {
                    return false;
                };
                if inside.is_empty()
                    || !inside
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '.' | '%'))
                {
                    return false;
                }
                match after {
                    "" => return true,
                    _ => match after.strip_prefix(':') {
                        Some(port) => ("v6", port),
                        None => return false,
                    },
                }
            } else {
                match one.split_once(':') {
                    Some((name, port)) => (name, port),
                    None => (one, "0"),
                }
            };
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '~' | '%'))
                && !port.is_empty()
                && port.chars().all(|c| c.is_ascii_digit())
        })
}

/// A "password" that is a port followed by a path (`https://host:443/@scope/pkg` has an `@`
/// in its path, not a password).
fn looks_like_port(password: &str) -> bool {
    let digits = password.chars().take_while(char::is_ascii_digit).count();
    digits > 0 && password[digits..].starts_with('/')
}

/// `text` percent-decoded, or as it is when it does not decode to UTF-8.
fn percent_decoded(text: &str) -> Secret {
    if !text.contains('%') {
        return Secret::from(text);
    }
    let bytes: Zeroizing<Vec<u8>> = Zeroizing::new(percent_decode_str(text).collect());
    match std::str::from_utf8(&bytes) {
        Ok(decoded) => Secret::from(decoded),
        Err(_) => Secret::from(text),
    }
}

/// How a connection string separates its fields, which says where an unquoted value ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fields {
    /// `key=value&key=value` after a `?`: ends at `&` or `#`, percent-encoded.
    Query,
    /// `Key=Value;Key=Value` (ADO.NET, ODBC, JDBC properties): ends at `;`.
    Semicolons,
    /// libpq's `key=value key=value`: ends at white space.
    Spaces,
}

/// The values of every `password=` or `pwd=` field of a connection string in `value`.
fn connection_passwords(value: &str) -> Vec<Secret> {
    // A copy of the value: zeroized. ASCII lowercasing keeps every byte offset.
    let lower = Zeroizing::new(value.to_ascii_lowercase());
    let mut out = Vec::new();
    for key in ["password", "pwd"] {
        for (at, _) in lower.match_indices(key) {
            let before = value[..at].chars().next_back();
            let fields = match before {
                Some('?' | '&') => Fields::Query,
                None | Some(';') => Fields::Semicolons,
                Some(c) if c.is_whitespace() => {
                    if value.contains(';') {
                        Fields::Semicolons
                    } else {
                        Fields::Spaces
                    }
                }
                Some(_) => continue,
            };
            let after = value[at + key.len()..].trim_start_matches([' ', '\t']);
            let Some(rest) = after.strip_prefix('=') else {
                continue;
            };
            if let Some(password) = field_value(rest.trim_start_matches([' ', '\t']), fields) {
                out.push(password);
            }
        }
    }
    out
}

/// The value at the start of `rest`: quoted (`'…'` with `\'` or `''`, `"…"` with `""`,
/// ODBC's `{…}` with `}}`), or up to the end of its field.
fn field_value(rest: &str, fields: Fields) -> Option<Secret> {
    let mut chars = rest.chars();
    let close = match chars.next()? {
        '\'' => '\'',
        '"' => '"',
        '{' => '}',
        _ => {
            let end = rest
                .find(|c: char| match fields {
                    Fields::Query => matches!(c, '&' | '#') || c.is_whitespace(),
                    Fields::Semicolons => c == ';',
                    Fields::Spaces => c.is_whitespace(),
                })
                .unwrap_or(rest.len());
            let raw = rest[..end].trim_end();
            return match fields {
                Fields::Query => Some(percent_decoded(raw)),
                _ => Some(Secret::from(raw)),
            };
        }
    };
    let mut value = Zeroizing::new(String::new());
    let mut closed = false;
    while let Some(c) = chars.next() {
        if c == '\\' && close == '\'' {
            if let Some(escaped) = chars.next() {
                value.push(escaped);
            }
        } else if c == close {
            // A doubled closing character stands for itself.
            if chars.clone().next() == Some(close) {
                chars.next();
                value.push(close);
            } else {
                closed = true;
                break;
            }
        } else {
            value.push(c);
        }
    }
    closed.then(|| Secret::from(value.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The passwords found in `value`, as text.
    fn found(value: &str) -> Vec<String> {
        passwords(value)
            .iter()
            .map(|(_, p)| p.expose().to_owned())
            .collect()
    }

    #[test]
    fn uri_shapes_yield_their_password() {
        let cases: [(&str, &[&str]); 16] = [
            ("postgres://app:FAKE-pw-0001@db:5432/x", &["FAKE-pw-0001"]),
            ("postgres://app:FAKE-pw-0002@db/x", &["FAKE-pw-0002"]),
            ("postgres://app:FAKE-pw-0003@db", &["FAKE-pw-0003"]),
            (
                "postgresql://app:FAKE%40pw%3A0004@db:5432",
                &["FAKE@pw:0004"],
            ),
            (
                "postgres://app:FAKE-pw-0005@[::1]:5432/x",
                &["FAKE-pw-0005"],
            ),
            (
                "postgres://app:FAKE-pw-0006@[2001:db8::7]/x",
                &["FAKE-pw-0006"],
            ),
            // Unencoded `@` and `:` in the password: a host runs to the path, so only the last
            // `@` before it is followed by one.
            ("postgres://app:FAKE@pw:0007@db:5432/x", &["FAKE@pw:0007"]),
            ("mysql://app:FAKE/pw+0008@db/x", &["FAKE/pw+0008"]),
            ("redis://:FAKE-pw-0009@cache:6379/0", &["FAKE-pw-0009"]),
            (
                "mongodb+srv://app:FAKE-pw-0010@a.example,b.example/x",
                &["FAKE-pw-0010"],
            ),
            (
                "jdbc:postgresql://app:FAKE-pw-0011@db:5432/x",
                &["FAKE-pw-0011"],
            ),
            (
                "DATABASE_URL=\"postgres://u:FAKE-pw-0012@db/x\" # prod",
                &["FAKE-pw-0012"],
            ),
            // A malformed percent sign is kept as it is.
            ("postgres://app:FAKE%zz0013@db", &["FAKE%zz0013"]),
            // An `@` in the query: the first reading is the password; the other is kept too
            // only when no `?` comes before it.
            (
                "postgres://app:FAKE-pw-0014@db/x?opt=a@b",
                &["FAKE-pw-0014"],
            ),
            (
                "amqp://u:FAKE-pw-0015@mq amqp://v:FAKE-pw-0016@mq2",
                &["FAKE-pw-0015", "FAKE-pw-0016"],
            ),
            (
                "postgres://app:FAKE-pw-0017@db:5432/x@y",
                &["FAKE-pw-0017", "FAKE-pw-0017@db:5432/x"],
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(found(value), expected, "{value}");
            assert!(
                passwords(value)
                    .iter()
                    .all(|(kind, _)| *kind == Embedded::UriPassword),
                "{value}"
            );
        }
    }

    #[test]
    fn uris_without_a_password_yield_nothing() {
        for value in [
            "postgres://app@db:5432/x",
            "postgres://db:5432/x",
            "https://example.invalid/path@scope",
            "https://registry.example.invalid:443/@scope/pkg",
            "postgres://app:@db/x",
            "://app:pw@db",
            "1x://app:pw@db",
            "postgres://host/db?x=a:b@c",
            "postgres://app:pw@/x",
            "postgres://app:pw@db:port/x",
            "FAKE-plain-token-0018",
        ] {
            assert_eq!(found(value), Vec::<String>::new(), "{value}");
        }
    }

    #[test]
    fn connection_strings_yield_their_password() {
        let cases: [(&str, &[&str]); 11] = [
            (
                "Server=db;Database=x;User Id=app;Password=FAKE-pw-0019;",
                &["FAKE-pw-0019"],
            ),
            (
                "Server=db;Uid=app;Pwd=FAKE pw 0020;Encrypt=yes",
                &["FAKE pw 0020"],
            ),
            (
                "Server=db;Password=\"FAKE;pw\"\"0021\";",
                &["FAKE;pw\"0021"],
            ),
            ("Driver={x};PWD={FAKE;pw}}0022};", &["FAKE;pw}0022"]),
            (
                "host=db port=5432 user=app password=FAKE-pw-0023 dbname=x",
                &["FAKE-pw-0023"],
            ),
            (
                "host=db password='FAKE pw\\'0024' dbname=x",
                &["FAKE pw'0024"],
            ),
            ("password = FAKE-pw-0025", &["FAKE-pw-0025"]),
            ("PASSWORD=FAKE-pw-0026", &["FAKE-pw-0026"]),
            (
                "jdbc:mysql://db:3306/x?user=app&password=FAKE%26pw0027&ssl=true",
                &["FAKE&pw0027"],
            ),
            ("db_password=FAKE-0028 PasswordFile=/x password=", &[]),
            ("host=db password='FAKE-unterminated", &[]),
        ];
        for (value, expected) in cases {
            assert_eq!(found(value), expected, "{value}");
        }
        assert_eq!(
            passwords("Password=FAKE-pw-0029;")[0].0,
            Embedded::ConnectionPassword
        );
    }

    #[test]
    fn a_password_named_twice_is_one_part_and_parts_are_bounded() {
        assert_eq!(
            found("postgres://u:FAKE-pw-0030@db/x?password=FAKE-pw-0030"),
            ["FAKE-pw-0030"]
        );
        let many: Vec<String> = (0..20).map(|i| format!("a://u:p{i}@h")).collect();
        assert_eq!(found(&many.join(" ")).len(), MAX_PASSWORDS);
    }

    #[test]
    fn hosts_are_names_addresses_or_lists_of_them() {
        for host in [
            "db",
            "db:5432",
            "[::1]",
            "[::1]:5432",
            "a:1,b:2",
            "10.0.0.1",
        ] {
            assert!(is_host(host), "{host}");
        }
        for host in ["", "db:", "db:x", "[::1", "[zz]", "a b", "[::1]x", "db@x"] {
            assert!(!is_host(host), "{host}");
        }
    }
}
