//! Integration tests of the wide-area bed. They need root, `/dev/net/tun` and `ip netns`; where
//! those are missing each test says so on stderr (not captured) with a running count and
//! returns. Set `WANBED_REQUIRE=1` to make a missing capability fail the tests instead.

#[path = "integration/bed.rs"]
mod bed;
#[path = "integration/support.rs"]
mod support;
