//! The node's connectivity probes, reported by `/status/check/host` as today's nodes report
//! them: for IPv4 and IPv6 each, `egress` (an HTTP request to a raw address answers at all),
//! `dns` (a well-known name resolves to an address of that family), `domain` (the node's own
//! domain does) and `http` (names and egress end to end: the first of a list of URLs that
//! answers). The first three are required for a healthy node; `http` is advisory, as third-party
//! probe endpoints come and go. Any HTTP answer counts, whatever its status.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde_json::{Value, json};

/// Today's nodes' IPv4 egress probe.
pub const DEFAULT_IPV4_URL: &str = "https://1.1.1.1/";
/// Today's nodes' IPv6 egress probe.
pub const DEFAULT_IPV6_URL: &str = "https://[2606:4700:4700::1111]/";
/// Today's nodes' DNS probe.
pub const DEFAULT_DNS_HOST: &str = "example.org";

/// Where the probes go ([`ConnectivityConfig::default`]: today's nodes' targets).
#[derive(Debug, Clone)]
pub struct ConnectivityConfig {
    /// The IPv4 egress probe: a URL with a raw IPv4 address.
    pub ipv4_url: String,
    /// The IPv6 egress probe: a URL with a raw IPv6 address.
    pub ipv6_url: String,
    /// The name whose resolution proves DNS works, per family.
    pub dns_host: String,
    /// The end-to-end probes, tried in order for each family.
    pub http_urls: Vec<String>,
    /// How long one probe may take.
    pub timeout: Duration,
}

impl Default for ConnectivityConfig {
    fn default() -> Self {
        ConnectivityConfig {
            ipv4_url: DEFAULT_IPV4_URL.into(),
            ipv6_url: DEFAULT_IPV6_URL.into(),
            dns_host: DEFAULT_DNS_HOST.into(),
            http_urls: vec![
                "http://detectportal.firefox.com/success.txt".into(),
                "https://connectivity-check.ubuntu.com/".into(),
                "https://www.gstatic.com/generate_204".into(),
            ],
            timeout: Duration::from_secs(5),
        }
    }
}

/// The probes' results (`{"ipv4": {...}, "ipv6": {...}}`) and whether every required one
/// passed.
pub async fn check(config: &ConnectivityConfig, domain: Option<&str>) -> (Value, bool) {
    let v4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let v6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    let (names, domain_names, egress4, egress6, http4, http6) = tokio::join!(
        resolve(&config.dns_host, config.timeout),
        async {
            match domain {
                Some(d) => resolve(d, config.timeout).await,
                None => (false, false),
            }
        },
        answers(v4, std::slice::from_ref(&config.ipv4_url), config.timeout),
        answers(v6, std::slice::from_ref(&config.ipv6_url), config.timeout),
        answers(v4, &config.http_urls, config.timeout),
        answers(v6, &config.http_urls, config.timeout),
    );
    let family = |egress: bool, dns: bool, domain: bool, http: bool| json!({"egress": egress, "dns": dns, "domain": domain, "http": http});
    let healthy = egress4 && egress6 && names.0 && names.1 && domain_names.0 && domain_names.1;
    (
        json!({
            "ipv4": family(egress4, names.0, domain_names.0, http4),
            "ipv6": family(egress6, names.1, domain_names.1, http6),
        }),
        healthy,
    )
}

/// Whether `host` resolves to an IPv4 address, and to an IPv6 one.
async fn resolve(host: &str, limit: Duration) -> (bool, bool) {
    match tokio::time::timeout(limit, tokio::net::lookup_host((host, 80))).await {
        Ok(Ok(addrs)) => addrs.fold((false, false), |(v4, v6), a| {
            (v4 || a.is_ipv4(), v6 || a.is_ipv6())
        }),
        _ => (false, false),
    }
}

/// Whether one of `urls` answers an HTTP request (any status) over the family of `local`.
async fn answers(local: IpAddr, urls: &[String], limit: Duration) -> bool {
    let Ok(client) = reqwest::Client::builder()
        .local_address(local)
        .timeout(limit)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    else {
        return false;
    };
    for url in urls {
        if client.get(url).send().await.is_ok() {
            return true;
        }
    }
    false
}
