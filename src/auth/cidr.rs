//! IP allowlists: IPv4 and IPv6 CIDR blocks, with IPv4-mapped IPv6 addresses matched as IPv4.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The client network a sign-in limit counts against: an IPv4 address, or the /64 of an IPv6 address
/// (one subscriber's allocation). IPv4-mapped IPv6 counts as the IPv4 address. A request without a
/// readable client address counts against one shared `unknown` network, so it is never unlimited.
pub fn client_network(ip: Option<&str>) -> String {
    let parsed = ip
        .and_then(|ip| ip.trim().parse::<IpAddr>().ok())
        .map(canonical);
    match parsed {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => {
            let prefix = u128::from(v6) & mask_v6(64);
            format!("{}/64", Ipv6Addr::from(prefix))
        }
        None => "unknown".to_string(),
    }
}

/// A network block such as `10.0.0.0/8` or `2001:db8::/32`, with host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// `::ffff:a.b.c.d` as the IPv4 address it stands for; every other address unchanged.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `x::y/n`; a bare address is a /32 or /128. Host bits are allowed
    /// and cleared (`10.1.2.3/8` is `10.0.0.0/8`). A mapped block `::ffff:a.b.c.d/n` with
    /// n ≥ 96 becomes the IPv4 block `a.b.c.d/(n-96)`.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IPv4 or IPv6 address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|&n| n <= max).ok_or_else(|| {
                    format!("the prefix length `/{p}` is out of range (0 to {max})")
                })?
            }
            Some(p) => return Err(format!("`/{p}` is not a prefix length")),
        };
        Ok(Cidr::new(ip, prefix))
    }

    fn new(ip: IpAddr, prefix: u8) -> Cidr {
        match ip {
            IpAddr::V4(v4) => Cidr {
                network: IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask_v4(prefix))),
                prefix,
            },
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if prefix >= 96 => Cidr::new(IpAddr::V4(v4), prefix - 96),
                _ => Cidr {
                    network: IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask_v6(prefix))),
                    prefix,
                },
            },
        }
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies in this block. IPv4-mapped IPv6 addresses are tested as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask_v4(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask_v6(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    /// The canonical form, e.g. `10.0.0.0/8`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Whether a client may pass: an empty list allows everyone; otherwise the client's address must
/// be present, parse, and fall in one of the blocks.
pub fn allowed(list: &[Cidr], ip: Option<&str>) -> bool {
    if list.is_empty() {
        return true;
    }
    let Some(ip) = ip.and_then(|ip| ip.trim().parse::<IpAddr>().ok()) else {
        return false;
    };
    list.iter().any(|cidr| cidr.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    #[test]
    fn ipv4_blocks() {
        let c = cidr("10.1.2.3/8");
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(ip("10.0.0.0")));
        assert!(c.contains(ip("10.255.255.255")));
        assert!(!c.contains(ip("11.0.0.0")));
        assert!(!c.contains(ip("9.255.255.255")));
        let c = cidr("192.168.1.0/24");
        assert!(c.contains(ip("192.168.1.77")));
        assert!(!c.contains(ip("192.168.2.1")));
        let c = cidr("172.16.0.0/12");
        assert!(c.contains(ip("172.31.255.255")));
        assert!(!c.contains(ip("172.32.0.0")));
        // An IPv4 block never matches a (non-mapped) IPv6 address.
        assert!(!cidr("0.0.0.0/0").contains(ip("::1")));
    }

    #[test]
    fn ipv6_blocks() {
        let c = cidr("2001:db8:abcd::1/48");
        assert_eq!(c.to_string(), "2001:db8:abcd::/48");
        assert!(c.contains(ip("2001:db8:abcd:ffff::1")));
        assert!(!c.contains(ip("2001:db8:abce::1")));
        let c = cidr("fe80::/10");
        assert!(c.contains(ip("febf::1")));
        assert!(!c.contains(ip("fec0::1")));
        assert!(!cidr("::/0").contains(ip("1.2.3.4")));
        assert!(cidr("::/0").contains(ip("2606:4700::1111")));
    }

    #[test]
    fn mapped_addresses_follow_ipv4_rules() {
        let v4 = cidr("203.0.113.0/24");
        assert!(v4.contains(ip("::ffff:203.0.113.9")));
        assert!(!v4.contains(ip("::ffff:203.0.114.9")));
        // A mapped block is an IPv4 block.
        let mapped = cidr("::ffff:203.0.113.0/120");
        assert_eq!(mapped, v4);
        assert!(mapped.contains(ip("203.0.113.200")));
        assert!(allowed(&[v4], Some("::ffff:203.0.113.1")));
        // The IPv4-compatible form `::a.b.c.d` is not a mapped address.
        assert!(!v4.contains(ip("::203.0.113.9")));
    }

    #[test]
    fn edges() {
        assert!(cidr("0.0.0.0/0").contains(ip("255.255.255.255")));
        assert!(cidr("0.0.0.0/0").contains(ip("0.0.0.0")));
        let host = cidr("1.2.3.4");
        assert_eq!(host, cidr("1.2.3.4/32"));
        assert!(host.contains(ip("1.2.3.4")));
        assert!(!host.contains(ip("1.2.3.5")));
        let host6 = cidr("2001:db8::1");
        assert_eq!(host6.prefix(), 128);
        assert_eq!(host6, cidr("2001:db8::1/128"));
        assert!(host6.contains(ip("2001:db8::1")));
        assert!(!host6.contains(ip("2001:db8::2")));
        assert!(cidr("::/0").contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert_eq!(cidr(" 10.0.0.0/8 ").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("128.0.0.0/1").to_string(), "128.0.0.0/1");
        assert!(!cidr("128.0.0.0/1").contains(ip("127.255.255.255")));
    }

    #[test]
    fn bad_input_is_an_error() {
        for bad in [
            "",
            "/",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "10.0.0.0/ 8",
            "10.0.0.0/0008",
            "10.0.0.0/255",
            "10.0.0.0/256",
            "::/129",
            "256.0.0.1",
            "1.2.3",
            "1.2.3.4.5",
            "example.com",
            "fe80::1%eth0",
            "[::1]",
            "::1/a",
            "1.2.3.4/8x",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Cidr::parse("10.0.0.0/33")
            .unwrap_err()
            .contains("out of range"));
    }

    #[test]
    fn allowlist_decisions() {
        assert!(allowed(&[], None));
        assert!(allowed(&[], Some("garbage")));
        let list = [cidr("10.0.0.0/8"), cidr("2001:db8::/32")];
        assert!(allowed(&list, Some("10.9.8.7")));
        assert!(allowed(&list, Some(" 2001:db8::5 ")));
        assert!(!allowed(&list, Some("192.0.2.1")));
        assert!(!allowed(&list, None));
        assert!(!allowed(&list, Some("")));
        assert!(!allowed(&list, Some("not-an-ip")));
    }

    #[test]
    fn client_networks_group_an_ipv6_64() {
        assert_eq!(client_network(Some("203.0.113.7")), "203.0.113.7");
        assert_eq!(client_network(Some("::ffff:203.0.113.7")), "203.0.113.7");
        assert_eq!(
            client_network(Some("2001:db8:1:2:aaaa::1")),
            client_network(Some("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_eq!(client_network(Some("2001:db8:1:2::9")), "2001:db8:1:2::/64");
        assert_ne!(
            client_network(Some("2001:db8:1:2::1")),
            client_network(Some("2001:db8:1:3::1"))
        );
        for odd in [None, Some(""), Some("not-an-ip"), Some("1.2.3.4, 5.6.7.8")] {
            assert_eq!(client_network(odd), "unknown");
        }
    }
}
