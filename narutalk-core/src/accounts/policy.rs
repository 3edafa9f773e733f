//! The API's registration rules for email, username and password, as pure
//! functions with no I/O.
//!
//! The rules are Django 5.2's and DRF's, ported by hand so that the Rust server accepts
//! and rejects exactly what the Django server did: `EmailValidator`,
//! `UnicodeUsernameValidator`, the four default password validators
//! (`UserAttributeSimilarityValidator` over the username and the email only,
//! `MinimumLengthValidator`, `CommonPasswordValidator`, `NumericPasswordValidator`) and
//! DRF's 128-character limit on the password field. Lengths are counted in Unicode
//! scalar values because Python's `len` counts code points. Where Python's Unicode
//! tables cannot be reproduced with `std` alone, the nearest `char` predicate is used and
//! the function's documentation says so.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

/// `Enter a valid email address.`
pub const EMAIL_INVALID: &str = "Enter a valid email address.";
/// `Enter a valid username. This value may contain only letters, numbers, and @/./+/-/_ characters.`
pub const USERNAME_INVALID: &str = "Enter a valid username. This value may contain only letters, numbers, and @/./+/-/_ characters.";
/// `This password is too short. It must contain at least 8 characters.`
pub const PASSWORD_TOO_SHORT: &str =
    "This password is too short. It must contain at least 8 characters.";
/// `This password is too long. It must contain at most 128 characters.`
pub const PASSWORD_TOO_LONG: &str =
    "This password is too long. It must contain at most 128 characters.";
/// `This password is entirely numeric.`
pub const PASSWORD_ENTIRELY_NUMERIC: &str = "This password is entirely numeric.";
/// `This password is too common.`
pub const PASSWORD_TOO_COMMON: &str = "This password is too common.";
/// `The password is too similar to the username.`
pub const PASSWORD_SIMILAR_TO_USERNAME: &str = "The password is too similar to the username.";
/// `The password is too similar to the email address.`
pub const PASSWORD_SIMILAR_TO_EMAIL: &str = "The password is too similar to the email address.";
/// The fewest characters a password may have (Django's `MinimumLengthValidator`).
pub const PASSWORD_MIN_CHARS: usize = 8;
/// The most characters a password may have (the DRF field's `max_length`).
pub const PASSWORD_MAX_CHARS: usize = 128;

/// Django's `EmailValidator` rejects longer addresses, following RFC 3696 section 3.
const EMAIL_MAX_CHARS: usize = 320;
/// RFC 1034 limits a domain label to 63 characters, and Django's domain regex follows it.
const DOMAIN_LABEL_MAX_CHARS: usize = 63;
/// Django refuses longer IPv6 strings before parsing them, to bound the parser's work.
const IPV6_MAX_CHARS: usize = 39;
/// Django's `UserAttributeSimilarityValidator` default `max_similarity`.
const MAX_SIMILARITY: f64 = 0.7;

/// Django 5.2's list of common passwords, already lower-cased; lines are trimmed the way
/// Django strips them when it loads its copy.
static COMMON_PASSWORDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../../data/common-passwords.txt")
        .lines()
        .map(str::trim)
        .collect()
});

/// True when `email` (already trimmed; the 254-character limit is checked elsewhere) has
/// valid syntax.
///
/// This is Django 5.2's `EmailValidator`: at most 320 characters, split at the last `@`,
/// a dot-atom or quoted-string user part, and a domain that is `localhost`, a domain name
/// (letters, digits, hyphens and any character from U+00A1 to U+FFFF in each label, so
/// `예시.com` passes), or an `[IPv4]` / `[IPv6]` literal. Like Django, it lets through
/// escaped spaces and tabs inside a quoted user part and BMP whitespace such as U+3000
/// inside a domain label, and it rejects characters above U+FFFF (emoji) in the domain.
pub fn is_valid_email(email: &str) -> bool {
    // `nth` stops after 321 characters, so a huge input costs no more than a short one.
    if email.is_empty() || email.chars().nth(EMAIL_MAX_CHARS).is_some() {
        return false;
    }
    let Some((user_part, domain_part)) = email.rsplit_once('@') else {
        return false;
    };
    is_valid_user_part(user_part)
        && (domain_part == "localhost"
            || is_valid_domain_name(domain_part)
            || is_valid_address_literal(domain_part))
}

/// True when every character of a non-empty `username` is a Unicode letter or digit
/// (`char::is_alphanumeric`) or one of `@ . + - _`. Korean names such as "김철수" are valid.
///
/// Django's `UnicodeUsernameValidator` uses Python's `\w`; `char::is_alphanumeric` is the
/// nearest `std` predicate and differs only on some combining vowel signs, which Rust
/// counts as alphabetic and Python does not.
pub fn is_valid_username(username: &str) -> bool {
    !username.is_empty()
        && username
            .chars()
            .all(|c| is_word_char(c) || matches!(c, '@' | '.' | '+' | '-'))
}

/// True when the password, lower-cased and trimmed (Django's CommonPasswordValidator
/// compares `password.lower().strip()`), is in the list.
pub fn is_common_password(password: &str) -> bool {
    let lowered = password.to_lowercase();
    COMMON_PASSWORDS.contains(lowered.trim_matches(is_python_whitespace))
}

/// Every rule the password breaks, as messages in Django's validator order, empty when it
/// is acceptable.
///
/// A password over [`PASSWORD_MAX_CHARS`] gets only [`PASSWORD_TOO_LONG`], because DRF's
/// field-level length check fails first and Django's validators never run. Otherwise the
/// order is: similarity to the username, else to the email; too short; too common;
/// entirely numeric. "Entirely numeric" uses `char::is_numeric` for Python's
/// `str.isdigit`, so it also counts characters such as `½` that Python does not.
pub fn password_problems(
    password: &str,
    username: Option<&str>,
    email: Option<&str>,
) -> Vec<&'static str> {
    // `nth` stops after 129 characters, so a huge password is rejected cheaply.
    if password.chars().nth(PASSWORD_MAX_CHARS).is_some() {
        return vec![PASSWORD_TOO_LONG];
    }
    let mut problems = Vec::new();
    if let Some(message) = similarity_problem(password, username, email) {
        problems.push(message);
    }
    if password.chars().count() < PASSWORD_MIN_CHARS {
        problems.push(PASSWORD_TOO_SHORT);
    }
    if is_common_password(password) {
        problems.push(PASSWORD_TOO_COMMON);
    }
    if !password.is_empty() && password.chars().all(char::is_numeric) {
        problems.push(PASSWORD_ENTIRELY_NUMERIC);
    }
    problems
}

/// Python's `re` with `IGNORECASE` matches these four characters against the ASCII
/// letters i, s and k (İ, ı, ſ and the Kelvin sign), so Django's ASCII-only character
/// classes accept them too.
fn is_ignorecase_ascii_letter(c: char) -> bool {
    matches!(c, '\u{130}' | '\u{131}' | '\u{17f}' | '\u{212a}')
}

/// Python's `str.isspace`, which `str.strip` uses: Unicode whitespace plus the four
/// information separators U+001C to U+001F.
fn is_python_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `\w`, approximated by `char::is_alphanumeric` plus the underscore.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The user part is Django's dot-atom or quoted string.
fn is_valid_user_part(user_part: &str) -> bool {
    is_dot_atom(user_part) || is_quoted_string(user_part)
}

/// One or more atoms joined by single dots, so a leading, trailing or doubled dot fails.
fn is_dot_atom(user_part: &str) -> bool {
    user_part
        .split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(is_atom_char))
}

/// Django's atom class `[-!#$%&'*+/=?^_`{}|~0-9A-Z]`, case-insensitive.
fn is_atom_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-!#$%&'*+/=?^_`{}|~".contains(c) || is_ignorecase_ascii_letter(c)
}

/// A pair of double quotes around unescaped quoted-string text and backslash escapes.
fn is_quoted_string(user_part: &str) -> bool {
    let Some(inner) = user_part
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    else {
        return false;
    };
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        // A backslash always starts an escape, because the unescaped class excludes it.
        let accepted = if c == '\\' {
            chars.next().is_some_and(is_escaped_char)
        } else {
            is_quoted_text_char(c)
        };
        if !accepted {
            return false;
        }
    }
    true
}

/// Django's unescaped class `[\001-\010\013\014\016-\037!#-\[\]-\177]`: no NUL, tab, line
/// feed, carriage return, space, double quote or backslash.
fn is_quoted_text_char(c: char) -> bool {
    matches!(c, '\u{1}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '!' | '#'..='[' | ']'..='\u{7f}')
        || is_ignorecase_ascii_letter(c)
}

/// Django's escaped class `[\001-\011\013\014\016-\177]`: anything ASCII but NUL, line
/// feed and carriage return.
fn is_escaped_char(c: char) -> bool {
    matches!(c, '\u{1}'..='\u{9}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{7f}')
        || is_ignorecase_ascii_letter(c)
}

/// Django's label class `[a-z\u00a1-\uffff0-9-]`, case-insensitive; the Unicode range is
/// how Django 5.2 accepts internationalized domain names without encoding them.
fn is_domain_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || ('\u{a1}'..='\u{ffff}').contains(&c)
}

/// Django's top-level-domain class `[a-z\u00a1-\uffff-]`, which has no digits.
fn is_tld_char(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '-' || ('\u{a1}'..='\u{ffff}').contains(&c)
}

/// Labels joined by dots, at least two of them, the last one a top-level domain.
fn is_valid_domain_name(domain_part: &str) -> bool {
    let Some((labels, tld)) = domain_part.rsplit_once('.') else {
        return false;
    };
    labels.split('.').all(is_valid_domain_label) && is_valid_tld(tld)
}

/// 1 to 63 label characters, not starting or ending with a hyphen.
fn is_valid_domain_label(label: &str) -> bool {
    !label.is_empty()
        && label.chars().nth(DOMAIN_LABEL_MAX_CHARS).is_none()
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label.chars().all(is_domain_char)
}

/// 2 to 63 letters or hyphens, not starting or ending with a hyphen, or a punycode label,
/// which is the only way a top-level domain may hold digits.
fn is_valid_tld(tld: &str) -> bool {
    let plain = tld.chars().nth(1).is_some()
        && tld.chars().nth(DOMAIN_LABEL_MAX_CHARS).is_none()
        && !tld.starts_with('-')
        && !tld.ends_with('-')
        && tld.chars().all(is_tld_char);
    plain || is_punycode_tld(tld)
}

/// Django's `xn--[a-z0-9]{1,59}`, case-insensitive.
fn is_punycode_tld(tld: &str) -> bool {
    let (Some(prefix), Some(encoded)) = (tld.get(..4), tld.get(4..)) else {
        return false;
    };
    prefix.eq_ignore_ascii_case("xn--")
        && !encoded.is_empty()
        && encoded.chars().nth(DOMAIN_LABEL_MAX_CHARS - 4).is_none()
        && encoded
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || is_ignorecase_ascii_letter(c))
}

/// `[address]` holding a valid IPv4 or IPv6 address in Django's `[A-F0-9:.]+` alphabet.
/// Django's `[IPv6:...]` tag does not fit that alphabet, so Django rejects it and so does
/// this. Rust's parsers agree with Python's `ipaddress` here: both refuse leading zeros in
/// IPv4 octets and an IPv4 tail anywhere but last.
fn is_valid_address_literal(domain_part: &str) -> bool {
    let Some(address) = domain_part
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    else {
        return false;
    };
    !address.is_empty()
        && address
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        && (address.parse::<Ipv4Addr>().is_ok()
            || (address.len() <= IPV6_MAX_CHARS && address.parse::<Ipv6Addr>().is_ok()))
}

/// The similarity message for the first attribute the password is too similar to, the
/// username before the email as in Django's attribute order.
fn similarity_problem(
    password: &str,
    username: Option<&str>,
    email: Option<&str>,
) -> Option<&'static str> {
    let password = LoweredPassword::new(password);
    [
        (username, PASSWORD_SIMILAR_TO_USERNAME),
        (email, PASSWORD_SIMILAR_TO_EMAIL),
    ]
    .into_iter()
    .find_map(|(value, message)| {
        value
            .is_some_and(|value| password.is_similar_to(value))
            .then_some(message)
    })
    .or_else(|| {
        // The contract names the email's local part too; Django's word pieces miss it
        // when it holds separators ("ab.cd" splits into "ab" and "cd").
        email
            .and_then(|email| email.rsplit_once('@'))
            .is_some_and(|(local, _)| password.is_similar_to_part(&local.to_lowercase()))
            .then_some(PASSWORD_SIMILAR_TO_EMAIL)
    })
}

/// The lower-cased password as a length and a sorted multiset of characters, built once so
/// that comparing it with each part of an attribute costs time in the part's length only.
struct LoweredPassword {
    /// Characters in the lower-cased password, which Django measures after `lower()`.
    len: usize,
    /// Each distinct character with its count, sorted by character for binary search.
    counts: Vec<(char, usize)>,
}

impl LoweredPassword {
    fn new(password: &str) -> Self {
        let mut chars: Vec<char> = password.to_lowercase().chars().collect();
        let len = chars.len();
        chars.sort_unstable();
        let mut counts: Vec<(char, usize)> = Vec::new();
        for c in chars {
            match counts.last_mut() {
                Some((last, count)) if *last == c => *count += 1,
                _ => counts.push((c, 1)),
            }
        }
        Self { len, counts }
    }

    /// Django compares the password with every `\W+`-separated part of the lower-cased
    /// attribute and with the whole of it; an empty attribute is skipped.
    fn is_similar_to(&self, value: &str) -> bool {
        if value.is_empty() {
            return false;
        }
        let value = value.to_lowercase();
        word_parts(&value)
            .chain(std::iter::once(value.as_str()))
            .any(|part| self.is_similar_to_part(part))
    }

    /// `SequenceMatcher(a=password, b=part).quick_ratio() >= 0.7`, after Django's cheap
    /// length-ratio skip.
    fn is_similar_to_part(&self, part: &str) -> bool {
        let part_len = part.chars().count();
        if exceeds_maximum_length_ratio(self.len, part_len) {
            return false;
        }
        let total_len = self.len + part_len;
        // The ratio cannot beat the one where every character of the shorter string
        // matches, so a part too long or too short to reach 0.7 skips the counting; this
        // keeps a huge attribute linear in its length.
        if quick_ratio(self.len.min(part_len), total_len) < MAX_SIMILARITY {
            return false;
        }
        let mut unmatched: Vec<usize> = self.counts.iter().map(|&(_, count)| count).collect();
        let mut matches = 0;
        for c in part.chars() {
            if let Ok(index) = self.counts.binary_search_by_key(&c, |&(key, _)| key)
                && let Some(left) = unmatched.get_mut(index)
                && *left > 0
            {
                *left -= 1;
                matches += 1;
            }
        }
        quick_ratio(matches, total_len) >= MAX_SIMILARITY
    }
}

/// The pieces of Python's `re.split(r"\W+", value)`, in no particular order since the
/// caller only asks whether any of them matches. Runs of separators give no empty piece
/// between them, but a separator at either end gives one empty piece, as in Python.
fn word_parts(value: &str) -> impl Iterator<Item = &str> {
    let is_separator = |c: char| !is_word_char(c);
    let empty_at_an_end = value.starts_with(is_separator) || value.ends_with(is_separator);
    value
        .split(is_separator)
        .filter(|part| !part.is_empty())
        .chain(empty_at_an_end.then_some(""))
}

/// Django's `exceeds_maximum_length_ratio`: a part at most a tenth of the password's
/// length, and under `max_similarity / 2` of it, can never reach the threshold, so Django
/// skips it. The float arithmetic mirrors Python's so that the boundary is identical.
fn exceeds_maximum_length_ratio(password_len: usize, value_len: usize) -> bool {
    let length_bound_similarity = MAX_SIMILARITY / 2.0 * password_len as f64;
    password_len >= value_len.saturating_mul(10) && (value_len as f64) < length_bound_similarity
}

/// `difflib`'s `_calculate_ratio`: twice the matches over the total length, and 1.0 when
/// both strings are empty.
fn quick_ratio(matches: usize, total_len: usize) -> f64 {
    if total_len == 0 {
        1.0
    } else {
        2.0 * matches as f64 / total_len as f64
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn valid_emails_are_accepted() {
        let cases = [
            "a@b.co",
            "kim@localhost",
            "x@[127.0.0.1]",
            "x@[::1]",
            "x@[2001:DB8::1]",
            "x@[::ffff:255.255.255.255]",
            "\"quoted\"@example.com",
            "\"\"@example.com",
            "\"a@b\"@example.com",
            "\"a\\ b\"@example.com",
            "kim@예시.com",
            "kim@예시.한국",
            "kim.doctor@example.com",
            "first+tag@mail.example.co.kr",
            "o'brien@example.com",
            "KIM@EXAMPLE.COM",
            "a@b.c-d",
            "a@example.xn--3e0b707e",
            "a@1.example.com",
            "\u{212a}im@example.com",
        ];
        for email in cases {
            assert!(is_valid_email(email), "{email:?} should be valid");
        }
    }

    #[test]
    fn invalid_emails_are_rejected() {
        let cases = [
            "",
            "plainaddress",
            "@x.com",
            "a@",
            "a@b",
            "a@-b.com",
            "a@b-.com",
            "a b@c.com",
            "a@b.c",
            "a..b@c.com",
            ".a@c.com",
            "a.@c.com",
            "a@b@c.com",
            "a@b.com.",
            "a@.b.com",
            "a@b..com",
            "a@b_c.com",
            "a@b.12",
            "a@b.c0m",
            "a@b.-com",
            "a@LOCALHOST",
            "김@example.com",
            "kim@😀.com",
            "a@b\u{a0}c.com",
            "a\n@b.com",
            "a@b.com\n",
            "\"a\"b\"@x.com",
            "\"a\\\"@x.com",
            "\"a b\"@x.com",
            "x@[IPv6:::1]",
            "x@[127.0.0.256]",
            "x@[01.2.3.4]",
            "x@[1.2.3.4",
            "x@[]",
            "x@[0000:0000:0000:0000:0000:ffff:255.255.255.255]",
            "x@[1::2::3]",
        ];
        for email in cases {
            assert!(!is_valid_email(email), "{email:?} should be invalid");
        }
    }

    #[test]
    fn an_email_may_have_320_characters_but_not_321() {
        let label = "가".repeat(63);
        let domain = format!("{label}.{label}.{label}.com");
        let local_part = "k".repeat(320 - 1 - domain.chars().count());
        let at_limit = format!("{local_part}@{domain}");
        assert_eq!(at_limit.chars().count(), 320);
        assert!(is_valid_email(&at_limit));
        let over = format!("k{at_limit}");
        assert!(!is_valid_email(&over));
    }

    #[test]
    fn a_domain_label_may_have_63_characters_but_not_64() {
        assert!(is_valid_email(&format!("a@{}.com", "가".repeat(63))));
        assert!(!is_valid_email(&format!("a@{}.com", "가".repeat(64))));
        assert!(is_valid_email(&format!("a@b.{}", "가".repeat(63))));
        assert!(!is_valid_email(&format!("a@b.{}", "가".repeat(64))));
    }

    #[test]
    fn bmp_whitespace_inside_a_domain_label_passes_as_in_django() {
        assert!(is_valid_email("a@b\u{3000}c.com"));
    }

    #[test]
    fn valid_usernames_are_accepted() {
        for username in ["kim", "김철수", "a.b+c-d_e@f", "Kim_2024", "١٢٣"] {
            assert!(is_valid_username(username), "{username:?} should be valid");
        }
    }

    #[test]
    fn invalid_usernames_are_rejected() {
        for username in ["", "kim lee", "kim!", "kim\n", "kim😀", "a/b"] {
            assert!(
                !is_valid_username(username),
                "{username:?} should be invalid"
            );
        }
    }

    #[test]
    fn an_acceptable_password_has_no_problems() {
        assert_eq!(
            password_problems(
                "vermilion-harbour-27",
                Some("kimdoctor"),
                Some("kim.doctor@example.com")
            ),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn a_password_over_128_characters_is_only_too_long() {
        let password = "1".repeat(129);
        assert_eq!(
            password_problems(&password, Some(&password), None),
            vec![PASSWORD_TOO_LONG]
        );
    }

    #[test]
    fn a_short_uncommon_password_is_only_too_short() {
        assert_eq!(
            password_problems("Xq7#pL2", None, None),
            vec![PASSWORD_TOO_SHORT]
        );
    }

    #[test]
    fn a_common_password_is_too_common() {
        assert_eq!(
            password_problems("password", None, None),
            vec![PASSWORD_TOO_COMMON]
        );
    }

    #[test]
    fn an_uncommon_numeric_password_is_entirely_numeric() {
        assert!(!is_common_password("40981273645"));
        assert_eq!(
            password_problems("40981273645", None, None),
            vec![PASSWORD_ENTIRELY_NUMERIC]
        );
    }

    #[test]
    fn a_short_common_numeric_password_breaks_three_rules_in_django_order() {
        assert_eq!(
            password_problems("1234567", None, None),
            vec![
                PASSWORD_TOO_SHORT,
                PASSWORD_TOO_COMMON,
                PASSWORD_ENTIRELY_NUMERIC
            ]
        );
    }

    #[test]
    fn similarity_comes_before_the_other_messages() {
        assert_eq!(
            password_problems("12345678", Some("12345678"), None),
            vec![
                PASSWORD_SIMILAR_TO_USERNAME,
                PASSWORD_TOO_COMMON,
                PASSWORD_ENTIRELY_NUMERIC
            ]
        );
        assert_eq!(
            password_problems("kim1", Some("kim1"), None),
            vec![PASSWORD_SIMILAR_TO_USERNAME, PASSWORD_TOO_SHORT]
        );
    }

    #[test]
    fn lengths_count_characters_not_bytes() {
        assert_eq!(
            password_problems("가나다라마바사", None, None),
            vec![PASSWORD_TOO_SHORT]
        );
        assert_eq!(
            password_problems("가나다라마바사아", None, None),
            Vec::<&str>::new()
        );
        assert_eq!(
            password_problems(&"가".repeat(128), None, None),
            Vec::<&str>::new()
        );
        assert_eq!(
            password_problems(&"가".repeat(129), None, None),
            vec![PASSWORD_TOO_LONG]
        );
        assert_eq!(
            password_problems(&"😀".repeat(128), None, None),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn the_common_password_check_ignores_case_and_surrounding_whitespace() {
        assert!(COMMON_PASSWORDS.contains("password1"));
        assert!(is_common_password("PassWord1"));
        assert!(is_common_password("  PASSWORD1\t"));
        assert!(is_common_password("\u{1c}password1"));
        assert!(is_common_password("ПАРОЛЬ"));
        assert!(!is_common_password("pass word1"));
        assert_eq!(
            password_problems("PassWord1", None, None),
            vec![PASSWORD_TOO_COMMON]
        );
    }

    #[test]
    fn a_password_equal_to_the_username_ignoring_case_is_too_similar() {
        assert_eq!(
            password_problems("KimDoctor77", Some("kimdoctor77"), None),
            vec![PASSWORD_SIMILAR_TO_USERNAME]
        );
    }

    #[test]
    fn a_password_close_to_the_whole_local_part_of_the_email_is_too_similar() {
        // "ab.cd" splits into "ab" and "cd", neither close enough alone; the local part
        // as a whole is (quick ratio 10/13).
        assert_eq!(
            password_problems("ab.cd123", Some("zz"), Some("ab.cd@example.com")),
            vec![PASSWORD_SIMILAR_TO_EMAIL]
        );
    }

    #[test]
    fn a_password_equal_to_the_email_is_too_similar() {
        assert_eq!(
            password_problems(
                "kim.doctor@example.com",
                None,
                Some("kim.doctor@example.com")
            ),
            vec![PASSWORD_SIMILAR_TO_EMAIL]
        );
    }

    #[test]
    fn a_username_plus_a_digit_is_too_similar() {
        assert_eq!(
            password_problems("kimdoctor1", Some("kimdoctor"), None),
            vec![PASSWORD_SIMILAR_TO_USERNAME]
        );
    }

    #[test]
    fn the_local_part_of_the_email_is_compared() {
        assert_eq!(
            password_problems("doctor88", None, Some("kim.doctor@example.com")),
            vec![PASSWORD_SIMILAR_TO_EMAIL]
        );
    }

    #[test]
    fn the_username_is_reported_before_the_email() {
        assert_eq!(
            password_problems(
                "kimdoctor1",
                Some("kimdoctor"),
                Some("kimdoctor@example.com")
            ),
            vec![PASSWORD_SIMILAR_TO_USERNAME]
        );
    }

    #[test]
    fn a_long_unrelated_password_is_not_similar() {
        assert_eq!(
            password_problems(
                "correct horse battery staple",
                Some("kimdoctor"),
                Some("kim.doctor@example.com")
            ),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn a_part_a_tenth_of_the_password_or_shorter_is_skipped() {
        assert!(exceeds_maximum_length_ratio(10, 1));
        assert!(!exceeds_maximum_length_ratio(9, 1));
        assert!(!exceeds_maximum_length_ratio(0, 0));
        assert_eq!(
            password_problems("qzxwvutrsq", Some("q"), None),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn an_empty_password_matches_an_empty_part_as_in_django() {
        assert_eq!(
            password_problems("", Some("kim."), None),
            vec![PASSWORD_SIMILAR_TO_USERNAME, PASSWORD_TOO_SHORT]
        );
        assert_eq!(
            password_problems("", Some("a..b"), None),
            vec![PASSWORD_TOO_SHORT]
        );
        assert_eq!(
            password_problems("", Some(""), Some("")),
            vec![PASSWORD_TOO_SHORT]
        );
    }

    #[test]
    fn word_parts_follow_python_re_split() {
        let mut parts: Vec<&str> = word_parts("kim.doctor@example.com").collect();
        parts.sort_unstable();
        assert_eq!(parts, vec!["com", "doctor", "example", "kim"]);
        let mut parts: Vec<&str> = word_parts(".kim..lee_2.").collect();
        parts.sort_unstable();
        assert_eq!(parts, vec!["", "kim", "lee_2"]);
    }

    #[test]
    fn huge_inputs_are_handled() {
        let huge = "a.".repeat(500_000);
        assert!(!is_valid_email(&huge));
        assert!(is_valid_username(&huge));
        assert_eq!(
            password_problems("qzxwvutr", Some(&huge), Some(&huge)),
            Vec::<&str>::new()
        );
        assert_eq!(
            password_problems(&huge, None, None),
            vec![PASSWORD_TOO_LONG]
        );
        assert!(!is_common_password(&huge));
    }

    proptest! {
        #[test]
        fn no_function_panics_on_any_string(
            a in any::<String>(),
            b in "\\PC{0,40}",
            c in "[a-zA-Z0-9@.\\[\\]:\"\\\\ \u{a1}\u{3000}가😀-]{0,40}",
        ) {
            let _ = is_valid_email(&a);
            let _ = is_valid_email(&c);
            let _ = is_valid_username(&a);
            let _ = is_common_password(&a);
            let _ = password_problems(&a, Some(&b), Some(&c));
            let _ = password_problems(&b, Some(&a), Some(&a));
            let _ = password_problems(&c, Some(&c), Some(&b));
        }

        #[test]
        fn a_password_over_128_characters_is_exactly_too_long(
            chars in proptest::collection::vec(any::<char>(), 129..400),
            username in any::<Option<String>>(),
            email in any::<Option<String>>(),
        ) {
            let password: String = chars.into_iter().collect();
            prop_assert_eq!(
                password_problems(&password, username.as_deref(), email.as_deref()),
                vec![PASSWORD_TOO_LONG]
            );
        }

        #[test]
        fn a_password_equal_to_a_nonempty_username_is_too_similar(password in "\\PC{1,128}") {
            let problems = password_problems(&password, Some(&password), None);
            prop_assert_eq!(problems.first().copied(), Some(PASSWORD_SIMILAR_TO_USERNAME));
        }
    }
}
