//! URLs as they may be shown: the one rule for every log line and every answer
//! that shows an outbound URL (agent endpoint, callback, webhook) to someone
//! who may not see its secrets.

use std::borrow::Cow;

/// `url` without its userinfo (`user:password@`), query string and fragment:
/// what may be written to a log or shown to a role that may not see secrets.
///
/// Works on the text, so that it also cleans a URL that does not parse (the
/// refusal of a malformed URL is logged too). It errs on the side of removing
/// too much: the authority is cut at its last `@` even where a parser would
/// read the URL differently.
pub fn shown(url: &str) -> Cow<'_, str> {
    // A query or fragment ends the URL wherever it starts: neither may appear
    // in the scheme or the authority.
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let head = &url[..end];
    let after_scheme = scheme_len(head).map_or(0, |n| n + 1);
    // `http://`, and the forms a URL parser accepts too (`http:\\`, `http:`).
    let rest = &head[after_scheme..];
    let slashes = rest.len() - rest.trim_start_matches(['/', '\\']).len();
    let auth_start = after_scheme + slashes;
    let authority_len = head[auth_start..]
        .find(['/', '\\'])
        .unwrap_or(head.len() - auth_start);
    match head[auth_start..auth_start + authority_len].rfind('@') {
        Some(at) => Cow::Owned(format!(
            "{}{}",
            &head[..auth_start],
            &head[auth_start + at + 1..]
        )),
        None if end == url.len() => Cow::Borrowed(url),
        None => Cow::Borrowed(head),
    }
}

/// The length of the scheme when `s` starts with one followed by `:`.
fn scheme_len(s: &str) -> Option<usize> {
    let colon = s.find(':')?;
    let scheme = &s[..colon];
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(colon)
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn shown_drops_userinfo_query_and_fragment() {
        for (url, want) in [
            ("https://hooks.example.com/x", "https://hooks.example.com/x"),
            (
                "https://hooks.example.com/x?token=s3cret",
                "https://hooks.example.com/x",
            ),
            (
                "https://u:p@hooks.example.com:8443/x?a=1#f",
                "https://hooks.example.com:8443/x",
            ),
            ("http://user@10.0.0.1", "http://10.0.0.1"),
            ("http://a@b:c@host/p@q", "http://host/p@q"),
            ("http://[::1]:80/x#frag", "http://[::1]:80/x"),
            ("HTTP:\\\\u:p@host\\x", "HTTP:\\\\host\\x"),
            ("http:u:p@host/x", "http:host/x"),
            ("not a url?secret=1", "not a url"),
            ("", ""),
        ] {
            assert_eq!(shown(url), want, "{url}");
        }
    }
}
