//! Where the server may send requests on a user's behalf: the SSRF rule for every outbound
//! OpenStack request (Keystone from a user's clouds.yaml, and the endpoints of the Keystone
//! catalog).
//!
//! The rule, for a target `host:port` whose address is `addr`:
//! 1. `addr` lies in a network the operator allowed, or `host:port` is an endpoint the operator
//!    allowed (`OPENSTACK_ALLOWED_ENDPOINTS`, e.g. `keystone.site:5000,10.20.0.0/16`): allowed;
//! 2. otherwise `addr` must be a public address: loopback, link-local, private, shared (CGNAT),
//!    unspecified, multicast, documentation, benchmarking and reserved ranges are refused
//!    ([`denied_range`]; IANA IPv4/IPv6 Special-Purpose Address Registries, RFC 6890).
//!
//! It is applied twice: to the URL before a request (scheme, IP literals, a host allowed only
//! on other ports) by [`EgressPolicy::check_url`], and to every address a host name resolves to,
//! at connect time, by [`EgressPolicy::check_resolved`] (so a name that resolves to a private
//! address — DNS rebinding included — is refused). Pure: no I/O here; the resolver that calls
//! it lives in `openstack`.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An operator-allowed `host:port` (host lower-cased; IPv6 without brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

/// The outbound rule: operator allow-lists plus the fixed deny ranges.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    networks: Vec<IpNet>,
    endpoints: Vec<Endpoint>,
    /// `verify: false` in a clouds.yaml is honoured only when this is set
    /// (`OPENSTACK_ALLOW_INSECURE_TLS`).
    pub allow_insecure_tls: bool,
}

/// Why a target is refused. The messages name the target and the setting that would allow
/// it, never anything the target answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("`{0}` is not an http(s) URL")]
    Scheme(String),
    #[error("{host}:{port} is not an allowed OpenStack endpoint: {host} is allowed only on port {allowed} (OPENSTACK_ALLOWED_ENDPOINTS)")]
    Port {
        host: String,
        port: u16,
        allowed: String,
    },
    #[error("{host} is not an allowed OpenStack endpoint: its address {addr} is {range}, refused unless the operator allows it (OPENSTACK_ALLOWED_ENDPOINTS)")]
    Address {
        host: String,
        addr: IpAddr,
        range: &'static str,
    },
}

impl EgressPolicy {
    /// Parses the allow-list: comma- or space-separated entries, each a network in CIDR form
    /// (`10.20.0.0/16`, `fd00::/8`), a single address (`192.0.2.7`, a /32 or /128) or a
    /// `host:port` (`keystone.site:5000`, `127.0.0.1:5000`, `[::1]:5000`). Errors name the
    /// entry.
    pub fn parse(list: &str, allow_insecure_tls: bool) -> Result<Self, String> {
        let mut policy = EgressPolicy {
            allow_insecure_tls,
            ..Default::default()
        };
        for entry in list
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|e| !e.is_empty())
        {
            if let Ok(net) = entry.parse::<IpNet>() {
                policy.networks.push(net);
            } else if let Ok(addr) = entry.parse::<IpAddr>() {
                policy.networks.push(IpNet::from(addr));
            } else {
                policy.endpoints.push(parse_endpoint(entry)?);
            }
        }
        Ok(policy)
    }

    /// Checks a URL before any connection: `http`/`https` only; an IP-literal host is checked
    /// in full now (no resolver runs for it); a host name that the allow-list names only with
    /// other ports is refused (its addresses would otherwise pass [`Self::check_resolved`]).
    pub fn check_url(&self, url: &url::Url) -> Result<(), Denied> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Denied::Scheme(url.scheme().to_string()));
        }
        let port = url.port_or_known_default().unwrap_or(0);
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_addr(&ip.to_string(), port, IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_addr(&ip.to_string(), port, IpAddr::V6(ip)),
            Some(url::Host::Domain(name)) => {
                let name = name.to_ascii_lowercase();
                let ports: Vec<u16> = self
                    .endpoints
                    .iter()
                    .filter(|e| e.host == name)
                    .map(|e| e.port)
                    .collect();
                if ports.is_empty() || ports.contains(&port) {
                    Ok(())
                } else {
                    Err(Denied::Port {
                        host: name,
                        port,
                        allowed: join_ports(&ports),
                    })
                }
            }
            None => Err(Denied::Scheme(url.scheme().to_string())),
        }
    }

    /// Checks one address a host name resolved to (the port was checked by
    /// [`Self::check_url`]): allowed when the name is an allowed endpoint, the address is in an
    /// allowed network, or the address is public.
    pub fn check_resolved(&self, host: &str, addr: IpAddr) -> Result<(), Denied> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.endpoints.iter().any(|e| e.host == host) {
            return Ok(());
        }
        self.check_network(&host, addr)
    }

    /// The full rule for a known address and port.
    pub fn check_addr(&self, host: &str, port: u16, addr: IpAddr) -> Result<(), Denied> {
        let literal = addr.to_string();
        if self
            .endpoints
            .iter()
            .any(|e| e.port == port && (e.host == host || e.host == literal))
        {
            return Ok(());
        }
        self.check_network(host, addr)
    }

    fn check_network(&self, host: &str, addr: IpAddr) -> Result<(), Denied> {
        let addr = canonical(addr);
        if self.networks.iter().any(|n| n.contains(&addr)) {
            return Ok(());
        }
        match denied_range(addr) {
            None => Ok(()),
            Some(range) => Err(Denied::Address {
                host: host.to_string(),
                addr,
                range,
            }),
        }
    }

    /// A one-line description for the start-up banner and `/healthz`.
    pub fn describe(&self) -> String {
        if self.networks.is_empty() && self.endpoints.is_empty() {
            return "public addresses only".to_string();
        }
        let mut allowed: Vec<String> = self.networks.iter().map(IpNet::to_string).collect();
        allowed.extend(self.endpoints.iter().map(|e| {
            if e.host.contains(':') {
                format!("[{}]:{}", e.host, e.port)
            } else {
                format!("{}:{}", e.host, e.port)
            }
        }));
        format!("public addresses and {}", allowed.join(", "))
    }
}

fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(" or ")
}

/// `host:port` or `[v6]:port`.
fn parse_endpoint(entry: &str) -> Result<Endpoint, String> {
    let bad = || {
        format!("`{entry}` is neither a network (10.0.0.0/8), an address nor host:port (keystone.example.org:5000)")
    };
    let (host, port) = entry.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let valid = !host.is_empty()
        && (host.parse::<IpAddr>().is_ok()
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    if !valid || port == 0 {
        return Err(bad());
    }
    let host = match host.parse::<IpAddr>() {
        Ok(ip) => canonical(ip).to_string(),
        Err(_) => host.to_ascii_lowercase(),
    };
    Ok(Endpoint { host, port })
}

/// An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) is its IPv4 address.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The special-purpose range an address lies in, if it is not a public unicast address.
/// Sources: IANA IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890 and updates);
/// cluster networks (Kubernetes Service and Pod CIDRs) are private ranges in practice
/// (10.96.0.0/12, 10.244.0.0/16, fd00::/8) and fall under "private".
pub fn denied_range(addr: IpAddr) -> Option<&'static str> {
    match canonical(addr) {
        IpAddr::V4(v4) => denied_v4(v4),
        IpAddr::V6(v6) => denied_v6(v6),
    }
}

fn denied_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, ..) => "unspecified (0.0.0.0/8)",
        (127, ..) => "loopback (127.0.0.0/8)",
        (10, ..) => "private (10.0.0.0/8)",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 168, _) => "private (192.168.0.0/16)",
        (169, 254, _) => "link-local (169.254.0.0/16)",
        (100, 64..=127, _) => "shared address space (CGNAT, 100.64.0.0/10)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation (TEST-NET)",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (224..=239, ..) => "multicast (224.0.0.0/4)",
        (240..=255, ..) => "reserved (240.0.0.0/4)",
        _ => return None,
    })
}

fn denied_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(if ip.is_unspecified() {
        "unspecified (::)"
    } else if ip.is_loopback() {
        "loopback (::1)"
    } else if first & 0xfe00 == 0xfc00 {
        "private (unique local, fc00::/7)"
    } else if first & 0xffc0 == 0xfe80 {
        "link-local (fe80::/10)"
    } else if first & 0xffc0 == 0xfec0 {
        "site-local (fec0::/10)"
    } else if first & 0xff00 == 0xff00 {
        "multicast (ff00::/8)"
    } else if first == 0x2001 && ip.segments()[1] == 0x0db8 {
        "documentation (2001:db8::/32)"
    } else if first == 0x0064 && ip.segments()[1] == 0xff9b {
        // NAT64 (64:ff9b::/96) embeds an IPv4 address: judge that one.
        let [.., hi, lo] = ip.segments();
        let v4 = Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
        return denied_v4(v4);
    } else if first == 0x0100 && ip.segments()[1..4] == [0, 0, 0] {
        "discard-only (100::/64)"
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).expect("test URL")
    }

    #[test]
    fn special_purpose_ranges_are_refused_without_an_allow_list() {
        let policy = EgressPolicy::default();
        for addr in [
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "10.96.0.1",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "fc00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "64:ff9b::a9fe:a9fe",
            "2001:db8::1",
        ] {
            let ip: IpAddr = addr.parse().expect(addr);
            assert!(denied_range(ip).is_some(), "{addr} should be refused");
            assert!(policy.check_addr(addr, 443, ip).is_err(), "{addr}");
            assert!(policy.check_resolved("h.example", ip).is_err(), "{addr}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        let policy = EgressPolicy::default();
        for addr in [
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "11.0.0.1",
            "2a00:1450::1",
            "64:ff9b::808:808",
        ] {
            let ip: IpAddr = addr.parse().expect(addr);
            assert_eq!(denied_range(ip), None, "{addr}");
            assert!(policy.check_addr(addr, 5000, ip).is_ok(), "{addr}");
        }
    }

    #[test]
    fn the_allow_list_opens_networks_and_exact_endpoints() {
        let policy = EgressPolicy::parse(
            "127.0.0.1:5000, 10.20.0.0/16 keystone.site:5000 [::1]:8774",
            false,
        )
        .expect("valid list");
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        // The listed port only.
        assert!(policy.check_url(&url("http://127.0.0.1:5000/v3")).is_ok());
        let e = policy
            .check_url(&url("http://127.0.0.1:5001/v3"))
            .expect_err("other port");
        assert!(e.to_string().contains("loopback"), "{e}");
        assert!(e.to_string().contains("OPENSTACK_ALLOWED_ENDPOINTS"), "{e}");
        assert!(policy.check_url(&url("http://[::1]:8774/")).is_ok());
        assert!(policy.check_url(&url("http://[::1]:8775/")).is_err());
        // A whole network, any port.
        assert!(policy.check_url(&url("https://10.20.3.4:9292/")).is_ok());
        assert!(policy.check_url(&url("https://10.21.3.4:9292/")).is_err());
        // A name: allowed on its port, its addresses then pass; other ports refused.
        assert!(policy
            .check_url(&url("https://KEYSTONE.site:5000/v3"))
            .is_ok());
        let e = policy
            .check_url(&url("https://keystone.site:35357/v3"))
            .expect_err("other port");
        assert!(matches!(e, Denied::Port { .. }), "{e}");
        assert!(policy.check_resolved("keystone.site.", lo).is_ok());
        // An unlisted name that resolves to loopback (e.g. `localhost`) is refused.
        assert!(policy.check_resolved("localhost", lo).is_err());
        // Schemes other than http(s).
        assert!(policy.check_url(&url("file:///etc/passwd")).is_err());
        assert!(policy.check_url(&url("gopher://8.8.8.8/")).is_err());
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in [
            "keystone",
            "host:port",
            "10.0.0.0/33",
            "a b:x",
            ":5000",
            "h:0",
        ] {
            let e = EgressPolicy::parse(bad, false).expect_err(bad);
            assert!(e.contains('`'), "{bad}: {e}");
        }
        let p = EgressPolicy::parse("", false).expect("empty");
        assert_eq!(p.describe(), "public addresses only");
    }
}
