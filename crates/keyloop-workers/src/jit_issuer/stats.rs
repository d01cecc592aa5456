//! What the service reports in STATS beyond the service API's own counts: error replies by
//! endpoint and code.

use super::Endpoint;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Error replies (refusals, and `unavailable`) by endpoint and code, reported in STATS as each
/// endpoint's `data` (`{"error_replies": {"ttl_too_long": 2}}`). An error is answered with a
/// JSON body that says why (what requesters have always read), so the service API, which
/// counts only empty-bodied error replies, leaves `num_errors` at 0: this is where operators
/// see them.
#[derive(Debug, Default)]
pub(super) struct ErrorReplies(Mutex<BTreeMap<(&'static str, String), u64>>);

impl ErrorReplies {
    pub(super) fn count(&self, endpoint: Endpoint, code: &str) {
        let mut counts = self.0.lock().expect("error replies lock");
        *counts
            .entry((endpoint.name(), code.to_owned()))
            .or_default() += 1;
    }

    pub(super) fn stats(&self, endpoint: &str) -> serde_json::Value {
        let counts = self.0.lock().expect("error replies lock");
        let by_code: BTreeMap<&str, u64> = counts
            .iter()
            .filter(|((name, _), _)| *name == endpoint)
            .map(|((_, code), n)| (code.as_str(), *n))
            .collect();
        serde_json::json!({ "error_replies": by_code })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_report_each_endpoints_error_replies_by_code_and_none_of_the_others() {
        let errors = ErrorReplies::default();
        errors.count(Endpoint::Issue, "ttl_too_long");
        errors.count(Endpoint::Issue, "ttl_too_long");
        errors.count(Endpoint::Issue, "unknown_scope");
        errors.count(Endpoint::Verify, "bad_request");
        assert_eq!(
            errors.stats("jit-issue"),
            serde_json::json!({"error_replies": {"ttl_too_long": 2, "unknown_scope": 1}})
        );
        assert_eq!(
            errors.stats("token-verify"),
            serde_json::json!({"error_replies": {"bad_request": 1}})
        );
        assert_eq!(
            ErrorReplies::default().stats("jit-issue"),
            serde_json::json!({"error_replies": {}})
        );
    }
}
