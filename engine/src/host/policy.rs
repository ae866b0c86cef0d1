//! The address policy of outbound connections: which IP addresses a program granted `internet`
//! may connect to.
//!
//! By default only public addresses: a connection to an address of the node itself or of its
//! networks is refused, whatever name led to it — loopback, unspecified (`0.0.0.0/8`, `::`;
//! connecting to them reaches the node), private (RFC 1918, IPv6 unique-local `fc00::/7` and the
//! deprecated site-local `fec0::/10`), shared (CGNAT, `100.64.0.0/10`), link-local
//! (`169.254.0.0/16`, where the cloud metadata service `169.254.169.254` lives, and
//! `fe80::/10`), multicast, broadcast, and the ranges reserved for documentation, benchmarking
//! and future use. An IPv6 address that embeds an IPv4 one (IPv4-mapped `::ffff:0:0/96`, NAT64
//! `64:ff9b::/96`, 6to4 `2002::/16`) is judged by its IPv4 address too.
//!
//! The node option `--allow-net CIDR` allows ranges besides (tests allow `127.0.0.0/8` to reach
//! their own servers): an address in an allowed range is allowed whatever its class.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Which addresses outbound connections may reach: public ones, and the ranges the node allows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allow: Vec<IpNet>,
}

impl AddressPolicy {
    /// The default policy, with `allow` allowed besides.
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// The policy allowing the CIDR ranges `ranges` (`--allow-net`: `127.0.0.0/8`, `::1/128`;
    /// a bare address is a range of one; empty strings are ignored).
    pub fn parse<S: AsRef<str>>(ranges: &[S]) -> Result<Self, String> {
        let mut allow = Vec::new();
        for range in ranges {
            let text = range.as_ref().trim();
            if text.is_empty() {
                continue;
            }
            let net = match text.parse::<IpNet>() {
                Ok(net) => net.trunc(),
                Err(_) => text.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                    format!(
                        "--allow-net {text:?} is not an address range (CIDR such as 127.0.0.0/8 or ::1/128)"
                    )
                })?,
            };
            allow.push(net);
        }
        Ok(Self { allow })
    }

    /// The ranges allowed besides public addresses.
    pub fn allowed(&self) -> &[IpNet] {
        &self.allow
    }

    /// Whether a connection to `ip` is allowed; if not, why, naming the node option that would
    /// allow it (`127.0.0.1 is a loopback address; the node allows it only with --allow-net`).
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        let Some(class) = classify(ip) else {
            return Ok(());
        };
        let embedded = embedded_ipv4(ip);
        let allowed = |ip: IpAddr| self.allow.iter().any(|net| net.contains(&ip));
        if allowed(ip) || embedded.is_some_and(|v4| allowed(IpAddr::V4(v4))) {
            return Ok(());
        }
        let via = match (ip, embedded) {
            (IpAddr::V6(_), Some(v4)) if classify(IpAddr::V4(v4)).is_some() => {
                format!(" (IPv6 for {v4})")
            }
            _ => String::new(),
        };
        Err(format!(
            "{ip}{via} is {class}; the node allows it only with --allow-net"
        ))
    }
}

/// The class of a non-public address, as a phrase (`a loopback address`); `None` for a public
/// one. An IPv6 address embedding an IPv4 address of a class has that class.
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_broadcast() => "the broadcast address",
        (0, _, _) => "an unspecified address",
        (127, _, _) => "a loopback address",
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => "a private address",
        (100, 64..=127, _) => "a shared (CGNAT) address",
        (169, 254, 169) if ip.octets()[3] == 254 => {
            "a link-local address (the cloud metadata service)"
        }
        (169, 254, _) => "a link-local address",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        (198, 18..=19, _) => "a benchmarking address",
        (192, 0, 0) | (192, 88, 99) | (240..=255, _, _) => "a reserved address",
        (224..=239, _, _) => "a multicast address",
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = embedded_ipv4(IpAddr::V6(ip))
        && let Some(class) = classify_v4(v4)
    {
        return Some(class);
    }
    let s = ip.segments();
    Some(match s {
        _ if ip.is_unspecified() => "an unspecified address",
        _ if ip.is_loopback() => "a loopback address",
        [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254] => "a private address (the cloud metadata service)",
        // ::/96 (IPv4-compatible, deprecated), the discard prefix 100::/64.
        [0, 0, 0, 0, 0, 0, _, _] | [0x0100, 0, 0, 0, ..] => "a reserved address",
        [0x0064, 0xff9b, 0x0001, ..] => "a private address",
        [0x2001, 0x0db8, ..] => "a documentation address",
        [x, ..] if x & 0xfff0 == 0x3ff0 => "a documentation address",
        [0x2001, 0x0002, 0, ..] => "a benchmarking address",
        [x, ..] if x & 0xfe00 == 0xfc00 => "a private address",
        [x, ..] if x & 0xffc0 == 0xfec0 => "a private address",
        [x, ..] if x & 0xffc0 == 0xfe80 => "a link-local address",
        [x, ..] if x & 0xff00 == 0xff00 => "a multicast address",
        _ => return None,
    })
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped (`::ffff:a.b.c.d`), NAT64
/// (`64:ff9b::a.b.c.d`), 6to4 (`2002:AABB:CCDD::/48`).
fn embedded_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else {
        return None;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let join = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0x0064, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(join(hi, lo)),
        [0x2002, hi, lo, ..] => Some(join(hi, lo)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("a test address")
    }

    #[test]
    fn public_addresses_are_allowed() {
        let policy = AddressPolicy::default();
        for a in [
            "93.184.216.34",
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:2800:220:1::",
            "2a00:1450:4007:80e::200e",
            "::ffff:93.184.216.34",
            "64:ff9b::808:808",
        ] {
            assert_eq!(policy.check(ip(a)), Ok(()), "{a}");
        }
    }

    #[test]
    fn the_node_and_its_networks_are_forbidden() {
        let policy = AddressPolicy::default();
        for (a, class) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("::1", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("::", "unspecified"),
            ("10.0.0.1", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("fc00::1", "private"),
            ("fd12:3456::1", "private"),
            ("fec0::1", "private"),
            ("100.64.0.1", "shared"),
            ("100.127.255.254", "shared"),
            ("169.254.1.1", "link-local"),
            ("169.254.169.254", "metadata"),
            ("fd00:ec2::254", "metadata"),
            ("fe80::1", "link-local"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.1", "documentation"),
            ("203.0.113.1", "documentation"),
            ("2001:db8::1", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("2001:2::1", "benchmarking"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.1.2.3", "private"),
            ("::ffff:169.254.169.254", "metadata"),
            ("64:ff9b::7f00:1", "loopback"),
            ("2002:7f00:1::1", "loopback"),
            ("::7f00:1", "reserved"),
        ] {
            let why = policy.check(ip(a)).expect_err(a);
            assert!(why.contains(class), "{a}: {why}");
            assert!(why.contains("--allow-net"), "{a}: {why}");
            assert!(why.starts_with(a), "{a}: {why}");
        }
        assert_eq!(
            policy.check(ip("127.0.0.1")),
            Err("127.0.0.1 is a loopback address; the node allows it only with --allow-net".into())
        );
        assert_eq!(
            policy.check(ip("::ffff:127.0.0.1")),
            Err(
                "::ffff:127.0.0.1 (IPv6 for 127.0.0.1) is a loopback address; the node allows it \
                 only with --allow-net"
                    .into()
            )
        );
    }

    #[test]
    fn allowed_ranges_override_the_classes() {
        let policy = AddressPolicy::parse(&["127.0.0.0/8", " ::1/128 ", "", "10.1.2.3"]).unwrap();
        assert_eq!(policy.allowed().len(), 3);
        assert_eq!(policy.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(policy.check(ip("127.3.2.1")), Ok(()));
        assert_eq!(policy.check(ip("::1")), Ok(()));
        assert_eq!(policy.check(ip("::ffff:127.0.0.1")), Ok(()));
        assert_eq!(policy.check(ip("10.1.2.3")), Ok(()));
        assert!(policy.check(ip("10.1.2.4")).is_err());
        assert!(policy.check(ip("192.168.0.1")).is_err());
        assert!(policy.check(ip("169.254.169.254")).is_err());
        // Host bits are dropped: 10.9.9.9/8 is 10.0.0.0/8.
        let policy = AddressPolicy::parse(&["10.9.9.9/8".to_string()]).unwrap();
        assert_eq!(policy.allowed(), &["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        assert_eq!(policy.check(ip("10.200.0.1")), Ok(()));
    }

    #[test]
    fn bad_ranges_are_refused_by_name() {
        for bad in ["127.0.0.0/33", "localhost", "::1/129", "1.2.3/8"] {
            let why = AddressPolicy::parse(&[bad]).expect_err(bad);
            assert!(why.contains("--allow-net") && why.contains(bad), "{why}");
        }
    }
}
