//! Unit tests of the runtime's pure decisions: nak delays and the give-up point.

use super::ConsumeConfig;
use super::consume::effective_give_up;
use super::process::retry_delay;

#[test]
fn retry_delay_grows_and_is_capped() {
    let c = ConsumeConfig::default();
    let d1 = retry_delay(&c, 1, 7);
    let d3 = retry_delay(&c, 3, 7);
    let d20 = retry_delay(&c, 20, 7);
    assert!(d1 >= c.base_retry_delay && d1 < c.base_retry_delay * 2);
    assert!(d3 >= c.base_retry_delay * 4);
    assert!(d20 <= c.max_retry_delay + c.max_retry_delay / 4);
}

#[test]
fn a_finite_delivery_limit_always_leaves_one_delivery_for_the_dlq() {
    // Unlimited (what `init` sets): the runtime's own threshold.
    assert_eq!(effective_give_up(20, -1), 20);
    assert_eq!(effective_give_up(20, 0), 20);
    // A consumer from an older `init` (max_deliver 20): give up on the 19th.
    assert_eq!(effective_give_up(20, 20), 19);
    assert_eq!(effective_give_up(5, 20), 5);
    // Degenerate limits still give the handler one delivery.
    assert_eq!(effective_give_up(20, 1), 1);
    assert_eq!(effective_give_up(0, -1), 1);
}
