//! Which addresses a tenant's webhook endpoint may reach. A tenant chooses its endpoint's URL, so
//! without a check it could make the scheduler send requests into the operator's network
//! (loopback services, cloud metadata at 169.254.169.254, private ranges). An endpoint created
//! with a tenant key is checked when it is created (every address its host resolves to) and again
//! on every delivery, where the guarded HTTP client connects only to addresses that pass, so a
//! name that resolves elsewhere later (DNS rebinding) gains nothing.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Whether `ip` is a public unicast address: not loopback, private, link-local, shared (CGNAT),
/// unspecified, broadcast, multicast, reserved or documentation, and for IPv6 forms that embed
/// an IPv4 address (mapped, compatible, NAT64, 6to4), not embedding one that is any of those.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    const NOT_PUBLIC: [([u8; 4], u32); 15] = [
        ([0, 0, 0, 0], 8),       // "this network", unspecified
        ([10, 0, 0, 0], 8),      // private
        ([100, 64, 0, 0], 10),   // shared address space (carrier-grade NAT)
        ([127, 0, 0, 0], 8),     // loopback
        ([169, 254, 0, 0], 16),  // link-local (cloud metadata lives here)
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // documentation
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast
        ([192, 168, 0, 0], 16),  // private
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // documentation
        ([203, 0, 113, 0], 24),  // documentation
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved, and the broadcast address
    ];
    !NOT_PUBLIC.iter().any(|&(net, p)| in_v4(ip, net, p))
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, prefix: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let bits = u128::from(ip);
    let low_v4 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    // Forms that carry an IPv4 address: judged by that address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    if bits >> 32 == 0 {
        // IPv4-compatible (deprecated), and `::` and `::1` with them.
        return is_public_v4(low_v4);
    }
    if in_v6(ip, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        return is_public_v4(low_v4);
    }
    if in_v6(ip, Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        return is_public_v4(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
    }
    const NOT_PUBLIC: [(Ipv6Addr, u32); 9] = [
        (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48), // local-use NAT64
        (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),     // discard
        (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23),    // IETF assignments, Teredo
        (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
        (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),    // documentation
        (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),     // unique local
        (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),    // link-local
        (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),    // site-local (deprecated)
        (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),     // multicast
    ];
    !NOT_PUBLIC.iter().any(|&(net, p)| in_v6(ip, net, p))
}

/// Why a URL's host may not be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The address is kept for the operator's logs; the message, which a tenant reads, does not
    /// name it (it would map internal names for whoever asks).
    #[error(
        "`{host}` is or resolves to a loopback, private, link-local or otherwise non-public address"
    )]
    Private { host: String, addr: IpAddr },
    #[error("`{0}` does not resolve: {1}")]
    Unresolved(String, String),
    #[error("the URL has no host")]
    NoHost,
}

/// Checks every address `url`'s host stands for: an IP literal as it is, a name as it resolves
/// now.
pub async fn check_url(url: &reqwest::Url) -> Result<(), Refused> {
    let host = url.host_str().ok_or(Refused::NoHost)?;
    // The parser has already normalised an IP literal (`0x7f.1` is `127.0.0.1`); IPv6 comes
    // bracketed.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return check_ip(bare, ip);
    }
    let name = host.to_string();
    let addrs = resolve(&name).await?;
    for a in addrs {
        check_ip(&name, a.ip())?;
    }
    Ok(())
}

fn check_ip(host: &str, addr: IpAddr) -> Result<(), Refused> {
    if is_public(addr) {
        Ok(())
    } else {
        Err(Refused::Private {
            host: host.to_string(),
            addr,
        })
    }
}

async fn resolve(name: &str) -> Result<Vec<SocketAddr>, Refused> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name, 0))
        .await
        .map_err(|e| Refused::Unresolved(name.to_string(), e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(Refused::Unresolved(name.into(), "no addresses".into()));
    }
    Ok(addrs)
}

/// The guarded client's resolver: a name's public addresses only, and an error when it has none,
/// so the connection is made to an address that was checked, not to one looked up again.
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let name = name.as_str().to_string();
        Box::pin(async move {
            let all = resolve(&name).await?;
            let public: Vec<SocketAddr> =
                all.iter().copied().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                let addr = all[0].ip();
                return Err(Box::new(Refused::Private { host: name, addr }) as _);
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(s: &str) -> bool {
        is_public(s.parse().unwrap())
    }

    #[test]
    fn refuses_what_is_not_public() {
        for s in [
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.5",
            "198.18.0.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2002:a00:1::1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "fec0::1",
            "100::1",
        ] {
            assert!(!public(s), "{s} passed as public");
        }
    }

    #[test]
    fn lets_public_addresses_through() {
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.1",
            "192.169.0.1",
            "100.128.0.1",
            "169.253.1.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(public(s), "{s} refused");
        }
    }

    #[tokio::test]
    async fn urls_are_judged_by_every_address_they_reach() {
        for u in [
            "http://127.0.0.1:9/x",
            "http://[::1]/",
            "http://10.0.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost:8080/",
            // Spellings of 127.0.0.1 that the URL parser normalises.
            "http://2130706433/",
            "http://0x7f.1/",
            "http://[::ffff:7f00:1]/",
        ] {
            let url: reqwest::Url = u.parse().unwrap();
            assert!(
                matches!(check_url(&url).await, Err(Refused::Private { .. })),
                "{u} was not refused"
            );
        }
        let url: reqwest::Url = "http://1.1.1.1/".parse().unwrap();
        assert_eq!(check_url(&url).await, Ok(()));
        let url: reqwest::Url = "http://no-such-host.invalid/".parse().unwrap();
        assert!(matches!(
            check_url(&url).await,
            Err(Refused::Unresolved(..))
        ));
    }

    #[tokio::test]
    async fn the_guarded_resolver_yields_no_private_address() {
        let r = PublicOnly.resolve("localhost".parse().unwrap()).await;
        assert!(r.is_err(), "localhost resolved through the guard");
    }
}
