//! Path rules shared by validation and the compiler: what a well-formed absolute path is, and
//! whether one path lies within another (by components, never by string prefix).

use std::borrow::Cow;

/// Why a path is not a normalized absolute path, or `None` if it is one.
pub fn absolute_path_problem(p: &str) -> Option<&'static str> {
    if !p.starts_with('/') {
        return Some("must be an absolute path");
    }
    if p.contains('\0') {
        return Some("must not contain NUL");
    }
    if p.len() > 1 && p.ends_with('/') {
        return Some("must not end with '/'");
    }
    if p.contains("//") {
        return Some("must not contain '//'");
    }
    if p.split('/').any(|c| c == "." || c == "..") {
        return Some("must not contain '.' or '..' components");
    }
    None
}

/// Whether `child` is `parent` or lies below it, comparing whole components.
pub fn is_within(child: &str, parent: &str) -> bool {
    let parent = parent.trim_end_matches('/');
    if parent.is_empty() {
        return child.starts_with('/');
    }
    match child.strip_prefix(parent) {
        Some("") => true,
        Some(rest) => rest.starts_with('/'),
        None => false,
    }
}

/// Normalize a path from an untrusted spec for comparison: collapse `//`, drop `.` and a
/// trailing `/`. `None` when it has a `..` component or is not absolute. Borrows when the
/// path is already normal (the usual case).
pub fn normalize(p: &str) -> Option<Cow<'_, str>> {
    if !p.starts_with('/') {
        return None;
    }
    if absolute_path_problem(p).is_none() {
        return Some(Cow::Borrowed(p));
    }
    let mut out = String::with_capacity(p.len());
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => {
                out.push('/');
                out.push_str(c);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Some(Cow::Owned(out))
}

/// Number of components: `/` → 0, `/a/b` → 2.
pub fn depth(p: &str) -> usize {
    p.split('/').filter(|c| !c.is_empty()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths() {
        assert_eq!(absolute_path_problem("/srv/in"), None);
        assert_eq!(absolute_path_problem("/"), None);
        assert!(absolute_path_problem("srv").is_some());
        assert!(absolute_path_problem("/a/../b").is_some());
        assert!(absolute_path_problem("/a/").is_some());
        assert!(absolute_path_problem("/a//b").is_some());
    }

    #[test]
    fn within_compares_components() {
        assert!(is_within("/srv/in/x", "/srv/in"));
        assert!(is_within("/srv/in", "/srv/in"));
        assert!(!is_within("/srv/input", "/srv/in"));
        assert!(is_within("/anything", "/"));
    }

    #[test]
    fn normalizes_untrusted_paths() {
        assert_eq!(normalize("/etc//hosts/").as_deref(), Some("/etc/hosts"));
        assert_eq!(normalize("/./etc").as_deref(), Some("/etc"));
        assert_eq!(normalize("/etc/../root"), None);
        assert_eq!(normalize("etc"), None);
        assert_eq!(normalize("/").as_deref(), Some("/"));
        assert_eq!(normalize("//").as_deref(), Some("/"));
        assert!(matches!(normalize("/etc/hosts"), Some(Cow::Borrowed(_))));
        assert_eq!(depth("/"), 0);
        assert_eq!(depth("/a/b"), 2);
    }
}
