use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn list(entries: &[&str]) -> Result<AllowList, String> {
    AllowList::new(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>())
}

const LOCAL: &[&str] = &[
    "127.0.0.1",
    "127.1.2.3",
    "::1",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "fc00::1",
    "fd12:3456::1",
    "0.0.0.0",
    "::",
    "100.64.0.1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "64:ff9b::7f00:1",
    // IPv4 carried in IPv6: compatible, SIIT, 6to4, NAT64 (well-known and local-use).
    "::127.0.0.1",
    "::10.0.0.1",
    "::ffff:0:7f00:1",
    "2002:7f00:1::1",
    "2002:a00:1::",
    "64:ff9b::a00:1",
    "64:ff9b:1::808:808",
    "64:ff9b:1:ffff::1",
];
const PUBLIC: &[&str] = &[
    "8.8.8.8",
    "172.32.0.1",
    "192.169.0.1",
    "100.128.0.1",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",
    "::8.8.8.8",
    "2002:808:808::1",
    "64:ff9b::808:808",
    "192.0.1.1",
    "192.0.2.1",
];
const FORBIDDEN: &[&str] = &[
    "169.254.169.254",
    "169.254.0.1",
    "169.254.170.2",
    "fe80::1",
    "febf::1",
    "::ffff:169.254.169.254",
    "64:ff9b::a9fe:a9fe",
    "fd00:ec2::254",
    "100.100.100.200",
    "224.0.0.1",
    "255.255.255.255",
    "ff02::1",
    // 192.0.0.0/24, IETF protocol assignments (192.0.0.192: Oracle Cloud metadata).
    "192.0.0.8",
    "192.0.0.192",
    "192.0.0.0",
    "192.0.0.255",
    "::ffff:192.0.0.170",
    // Refused IPv4 carried in IPv6.
    "::169.254.169.254",
    "::ffff:0:a9fe:a9fe",
    "2002:a9fe:a9fe::1",
    "2002:a9fe:a9fe:ffff:ffff:ffff:ffff:ffff",
    "2002:c000:8::",
    "64:ff9b::192.0.0.8",
    "64:ff9b:1::a9fe:a9fe",
    "64:ff9b:1:a9fe:a9:fe00::",
    "64:ff9b:1:a9:fe:a9fe::",
    "64:ff9b:1:0:a9:fea9:fe00:0",
    "::e000:1",
];

#[test]
fn default_on_loopback_allows_local_and_public_but_not_metadata() {
    let a = AllowList::default_for_listen(true);
    for s in LOCAL.iter().chain(PUBLIC) {
        assert!(a.allows(None, ip(s)), "{s}");
        assert!(a.allows(Some("any.example"), ip(s)), "{s}");
    }
    for s in FORBIDDEN {
        assert!(!a.allows(None, ip(s)), "{s}");
        assert!(!a.allows(Some("localhost"), ip(s)), "{s}");
    }
}

#[test]
fn default_off_loopback_allows_only_public() {
    let a = AllowList::default_for_listen(false);
    for s in PUBLIC {
        assert!(a.allows(None, ip(s)), "{s}");
    }
    for s in LOCAL.iter().chain(FORBIDDEN) {
        assert!(!a.allows(None, ip(s)), "{s}");
        assert!(!a.allows(Some("localhost"), ip(s)), "{s}");
    }
}

#[test]
fn explicit_list_allows_only_what_it_lists() {
    let a = list(&[
        "api.example.com",
        "*.hooks.example.org",
        "10.0.0.0/8",
        "2001:db8::/32",
        "192.0.2.7",
        "HOOKS.Example.NET.",
    ])
    .unwrap();
    // Host names: any address they resolve to (but not metadata).
    assert!(a.allows(Some("api.example.com"), ip("203.0.113.5")));
    assert!(a.allows(Some("API.Example.COM."), ip("127.0.0.1")));
    assert!(a.allows(Some("hooks.example.net"), ip("203.0.113.5")));
    assert!(!a.allows(Some("other.example.com"), ip("203.0.113.5")));
    assert!(!a.allows(Some("api.example.com.evil.test"), ip("203.0.113.5")));
    // Wildcards: subdomains at any depth, not the parent, not look-alikes.
    assert!(a.allows(Some("a.hooks.example.org"), ip("203.0.113.5")));
    assert!(a.allows(Some("x.y.hooks.example.org"), ip("203.0.113.5")));
    assert!(!a.allows(Some("hooks.example.org"), ip("203.0.113.5")));
    assert!(!a.allows(Some("evilhooks.example.org"), ip("203.0.113.5")));
    // Addresses and CIDRs, whichever name led there.
    assert!(a.allows(None, ip("10.0.0.0")));
    assert!(a.allows(None, ip("10.255.255.255")));
    assert!(a.allows(Some("internal.test"), ip("10.2.3.4")));
    assert!(a.allows(None, ip("::ffff:10.2.3.4")), "mapped v4");
    assert!(!a.allows(None, ip("11.0.0.1")));
    assert!(a.allows(None, ip("2001:db8:1::5")));
    assert!(!a.allows(None, ip("2001:db9::")));
    assert!(a.allows(None, ip("192.0.2.7")));
    assert!(!a.allows(None, ip("192.0.2.8")));
    // Nothing else: not loopback, not public.
    assert!(!a.allows(None, ip("127.0.0.1")));
    assert!(!a.allows(None, ip("8.8.8.8")));
    assert!(!a.allows(Some("localhost"), ip("127.0.0.1")));

    let none = list(&[]).unwrap();
    assert!(!none.allows(None, ip("8.8.8.8")));
    assert!(!none.allows(Some("example.com"), ip("8.8.8.8")));
}

#[test]
fn cidr_edges() {
    let a = list(&["0.0.0.0/0"]).unwrap();
    assert!(a.allows(None, ip("8.8.8.8")));
    assert!(a.allows(None, ip("127.0.0.1")));
    assert!(!a.allows(None, ip("2001:db8::1")), "v4 block, v6 address");
    let a = list(&["::/0"]).unwrap();
    assert!(a.allows(None, ip("2001:db8::1")));
    assert!(a.allows(None, ip("::1")));
    let a = list(&["fc00::/7", "172.16.0.0/12", "127.0.0.1/32", "::1/128"]).unwrap();
    assert!(a.allows(None, ip("fdff:ffff::1")));
    assert!(!a.allows(None, ip("fe00::1")));
    assert!(a.allows(None, ip("172.31.0.1")));
    assert!(!a.allows(None, ip("172.32.0.1")));
    assert!(a.allows(None, ip("127.0.0.1")));
    assert!(!a.allows(None, ip("127.0.0.2")));
    assert!(a.allows(None, ip("::1")));
}

#[test]
fn metadata_is_refused_even_when_listed() {
    let a = list(&[
        "169.254.169.254",
        "169.254.0.0/16",
        "fe80::/10",
        "0.0.0.0/0",
        "::/0",
        "metadata.internal",
    ])
    .unwrap();
    for s in FORBIDDEN {
        assert!(!a.allows(None, ip(s)), "{s}");
        assert!(!a.allows(Some("metadata.internal"), ip(s)), "{s}");
    }
    assert!(a.allows(Some("metadata.internal"), ip("10.0.0.1")));
}

#[test]
fn the_listen_address_decides_loopback_and_private_literals() {
    // The rules that refuse at call time refuse at creation: loopback is
    // allowed on a loopback listener only, and never a forbidden address.
    let on_loopback = AllowList::default_for_listen(true);
    let on_any = AllowList::default_for_listen(false);
    for url in [
        "http://127.0.0.1:9100",
        "http://[::1]/x",
        "http://10.0.0.5:9101/agent",
        "http://[2002:7f00:1::1]/",
    ] {
        assert!(check_new_url(&on_loopback, url).is_ok(), "{url}");
        let err = check_new_url(&on_any, url).unwrap_err();
        assert!(matches!(err, OutboundError::Refused(_)), "{url}: {err:?}");
    }
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://[::169.254.169.254]/",
        "http://[2002:a9fe:a9fe::1]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://192.0.0.8/",
        "http://0xa9fea9fe/",
    ] {
        for allow in [&on_loopback, &on_any] {
            let err = check_new_url(allow, url).unwrap_err();
            assert!(matches!(err, OutboundError::Refused(_)), "{url}: {err:?}");
        }
    }
    // Host names are left to the resolver, at call time.
    for url in ["http://localhost:9/", "https://hooks.example.com/x?a=1"] {
        assert!(check_new_url(&on_any, url).is_ok(), "{url}");
    }
}

#[test]
fn credentials_in_new_urls_are_refused() {
    let allow = AllowList::default_for_listen(true);
    for url in [
        "http://user:pw@127.0.0.1/",
        "http://user@hooks.example.com/",
        "https://:pw@hooks.example.com/",
        "https://hooks.example.com/x?token=s3cret",
        "https://hooks.example.com/x?a=1&access_token=s",
        "https://hooks.example.com/x?apiKey=s",
        "https://hooks.example.com/x?api-key=s",
        "https://hooks.example.com/x?X-Amz-Signature=s",
        "https://hooks.example.com/x?sig=s",
        "https://hooks.example.com/x?code=s",
        "https://hooks.example.com/x?Password=s",
        "https://hooks.example.com/x?client_secret=s",
        "https://hooks.example.com/x?authToken=s",
        "https://hooks.example.com/x?auth",
        "https://hooks.example.com/x?%74oken=s",
        "https://hooks.example.com/x?SESSION_ID=s",
    ] {
        let err = check_new_url(&allow, url).unwrap_err();
        let OutboundError::InvalidUrl(why) = &err else {
            panic!("{url}: {err:?}");
        };
        assert!(!why.contains("s3cret") && !why.contains("pw"), "{why}");
    }
    for url in [
        "https://hooks.example.com/x",
        "https://hooks.example.com/x?source=maestro&team=payments",
        "https://hooks.example.com/token/key?id=1",
        "https://hooks.example.com/x?keyword=a&author=b&design=c",
        "http://127.0.0.1:9/x#token",
    ] {
        assert!(check_new_url(&allow, url).is_ok(), "{url}");
    }
}

#[test]
fn credential_param_names() {
    for name in [
        "token",
        "TOKEN",
        "id_token",
        "refreshToken",
        "apikey",
        "api.key",
        "privateKey",
        "secret",
        "x-goog-credential",
        "passwd",
        "pwd",
        "jwt",
        "hmac",
        "otp",
        "sid",
    ] {
        assert!(credential_param(name), "{name}");
    }
    for name in [
        "", "id", "source", "keyword", "author", "design", "passage", "codec",
    ] {
        assert!(!credential_param(name), "{name}");
    }
}

#[test]
fn malformed_entries_are_rejected_by_name() {
    for bad in [
        "",
        "  ",
        "http://example.com",
        "example.com:8080",
        "example.com/path",
        "10.0.0.0/33",
        "::/129",
        "10.0.0.0/",
        "10.0.0.0/-1",
        "10.0.0.0/x",
        "10.1.2.3/8",
        "2001:db8::1/32",
        "1.2.3",
        "1.2.3.4.5",
        "256.1.1.1",
        "[::1]",
        "*",
        "*.",
        "*.*.example.com",
        "ex*ample.com",
        "a..b",
        "-a.com",
        "a-.com",
        "exa mple.com",
        "bücher.de",
        "user@example.com",
    ] {
        let err = list(&["ok.example", bad]).expect_err(bad);
        assert!(err.contains("outboundAllowList"), "{bad}: {err}");
    }
    let err = list(&["10.1.2.3/8"]).unwrap_err();
    assert!(err.contains("10.0.0.0/8"), "suggests the network: {err}");
    // Well-formed ones, for contrast.
    list(&[
        "localhost",
        "Example.COM",
        "*.example.com",
        "xn--bcher-kva.de",
        "my_host.internal",
        "10.0.0.0/8",
        " 192.168.0.0/16 ",
        "::1",
        "2001:db8::/32",
        "::ffff:10.0.0.0/104",
    ])
    .unwrap();
}

// ---------------------------------------------------------------------------
// HttpOutbound against a hand-rolled receiver on loopback
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Seen {
    head: String,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

type SeenLog = Arc<Mutex<Vec<Seen>>>;

/// Answers each request with the next canned response (the last one repeats);
/// `None` means: read the request and never answer.
async fn receiver(responses: Vec<Option<String>>) -> (u16, SeenLog) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: SeenLog = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => break 0,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            if head_end == 0 {
                continue;
            }
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let len = Seen {
                head: head.clone(),
                body: vec![],
            }
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
            while buf.len() < head_end + len {
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let n = {
                let mut l = log.lock().unwrap();
                l.push(Seen {
                    head,
                    body: buf[head_end..].to_vec(),
                });
                l.len()
            };
            let response = responses[(n - 1).min(responses.len() - 1)].clone();
            match response {
                Some(r) => {
                    let _ = sock.write_all(r.as_bytes()).await;
                    let _ = sock.shutdown().await;
                }
                None => {
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        drop(sock);
                    });
                }
            }
        }
    });
    (port, seen)
}

fn answer(status: &str, body: &str) -> Option<String> {
    Some(format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

fn fixed(entries: &[(&str, &[&str])]) -> Lookup {
    Lookup::Fixed(Arc::new(
        entries
            .iter()
            .map(|(h, ips)| (h.to_string(), ips.iter().map(|s| ip(s)).collect()))
            .collect::<HashMap<_, _>>(),
    ))
}

async fn post(out: &HttpOutbound, url: &str) -> Result<u16, OutboundError> {
    out.post_json(url, &json!({"k": 1}), &[], 5_000).await
}

#[tokio::test]
async fn posts_json_once_with_headers() {
    let (port, seen) = receiver(vec![answer("204 No Content", "")]).await;
    let out = HttpOutbound::new(AllowList::default_for_listen(true));
    let status = out
        .post_json(
            &format!("http://127.0.0.1:{port}/hook?x=1"),
            &json!({"hello": "world"}),
            &[("X-Maestro-Delivery".into(), "e:s:callback".into())],
            5_000,
        )
        .await
        .unwrap();
    assert_eq!(status, 204);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert!(
        r.head.starts_with("POST /hook?x=1 HTTP/1.1\r\n"),
        "{}",
        r.head
    );
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        r.header("user-agent").as_deref(),
        Some(concat!("maestro/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(
        r.header("x-maestro-delivery").as_deref(),
        Some("e:s:callback")
    );
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body, json!({"hello": "world"}));
}

#[tokio::test]
async fn non_2xx_fails_with_the_status_and_some_of_the_body() {
    let (port, seen) = receiver(vec![answer("503 Service Unavailable", "try later")]).await;
    let out = HttpOutbound::new(AllowList::default_for_listen(true));
    let err = post(&out, &format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap_err();
    let OutboundError::Failed(msg) = err else {
        panic!("{err:?}")
    };
    assert!(msg.contains("503") && msg.contains("try later"), "{msg}");
    assert_eq!(seen.lock().unwrap().len(), 1, "one attempt");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let redirect = Some(
        "HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/latest/meta-data/\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
            .to_owned(),
    );
    let (port, seen) = receiver(vec![redirect]).await;
    let out = HttpOutbound::new(AllowList::default_for_listen(true));
    let err = post(&out, &format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, OutboundError::Failed(m) if m.contains("302")),
        "{err:?}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_large_answer_is_not_read_in_full() {
    let big = "x".repeat(4 << 20);
    let (port, _) = receiver(vec![answer("200 OK", &big)]).await;
    let out = HttpOutbound::new(AllowList::default_for_listen(true));
    assert_eq!(
        post(&out, &format!("http://127.0.0.1:{port}/")).await,
        Ok(200)
    );
}

#[tokio::test]
async fn no_answer_times_out() {
    let (port, seen) = receiver(vec![None]).await;
    let out = HttpOutbound::new(AllowList::default_for_listen(true));
    let t0 = Instant::now();
    let err = out
        .post_json(&format!("http://127.0.0.1:{port}/"), &json!({}), &[], 300)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, OutboundError::Failed(m) if m.contains("300 ms")),
        "{err:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn connection_refused_is_a_failure() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = HttpOutbound::new(AllowList::default_for_listen(true));
    let err = post(&out, &format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap_err();
    assert!(matches!(err, OutboundError::Failed(_)), "{err:?}");
}

#[tokio::test]
async fn bad_urls_are_invalid() {
    let out = HttpOutbound::new(AllowList::default_for_listen(true));
    for url in [
        "not a url",
        "/relative/path",
        "ftp://127.0.0.1/x",
        "file:///etc/passwd",
        "http://user:pw@127.0.0.1/",
        "http://user@127.0.0.1/",
    ] {
        let err = post(&out, url).await.unwrap_err();
        assert!(
            matches!(err, OutboundError::InvalidUrl(_)),
            "{url}: {err:?}"
        );
    }
    let err = out
        .post_json(
            "http://127.0.0.1:9/",
            &json!({}),
            &[("bad name".into(), "v".into())],
            1_000,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, OutboundError::InvalidUrl(_)), "{err:?}");
}

#[tokio::test]
async fn ip_literals_are_checked_before_connecting() {
    let (port, seen) = receiver(vec![answer("200 OK", "")]).await;
    let out = HttpOutbound::new(AllowList::default_for_listen(false));
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        // Other spellings of loopback, normalized by the URL parser.
        format!("http://2130706433:{port}/"),
        format!("http://0x7f.1:{port}/"),
        format!("http://0.0.0.0:{port}/"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://[fe80::1]/".to_owned(),
    ] {
        let err = post(&out, &url).await.unwrap_err();
        assert!(matches!(err, OutboundError::Refused(_)), "{url}: {err:?}");
    }
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn resolved_addresses_are_checked_and_connected_to() {
    let (port, seen) = receiver(vec![answer("200 OK", "")]).await;
    let lookup = fixed(&[
        ("metadata.test", &["169.254.169.254"]),
        ("mixed.test", &["127.0.0.1", "169.254.169.254"]),
        ("pinned.test", &["127.0.0.1"]),
    ]);
    let out = HttpOutbound::with_lookup(AllowList::default_for_listen(true), lookup.clone());
    for host in ["metadata.test", "mixed.test", "METADATA.test."] {
        let err = post(&out, &format!("http://{host}:{port}/"))
            .await
            .unwrap_err();
        let OutboundError::Refused(why) = &err else {
            panic!("{host}: {err:?}")
        };
        assert!(why.contains("169.254.169.254"), "{why}");
    }
    assert!(seen.lock().unwrap().is_empty());
    // The name is connected to the address that was checked.
    assert_eq!(
        post(&out, &format!("http://pinned.test:{port}/x")).await,
        Ok(200)
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("host").as_deref(),
        Some(format!("pinned.test:{port}").as_str())
    );

    // Off loopback, the same name is refused for resolving to loopback.
    let out = HttpOutbound::with_lookup(AllowList::default_for_listen(false), lookup);
    let err = post(&out, &format!("http://pinned.test:{port}/x"))
        .await
        .unwrap_err();
    assert!(matches!(err, OutboundError::Refused(_)), "{err:?}");
}

#[tokio::test]
async fn system_lookup_of_localhost_is_checked() {
    let (port, seen) = receiver(vec![answer("200 OK", "")]).await;
    let out = HttpOutbound::new(AllowList::default_for_listen(false));
    let err = post(&out, &format!("http://localhost:{port}/"))
        .await
        .unwrap_err();
    assert!(matches!(err, OutboundError::Refused(_)), "{err:?}");
    assert!(seen.lock().unwrap().is_empty());
    // Listed by name, it is allowed.
    let out = HttpOutbound::new(list(&["localhost"]).unwrap());
    assert_eq!(
        post(&out, &format!("http://localhost:{port}/")).await,
        Ok(200)
    );
}
