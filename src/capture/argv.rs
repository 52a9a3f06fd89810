//! argv as the kernel read it (NUL-separated bytes) → arguments with every
//! secret-looking value masked, before anything else sees them: the daemon
//! never holds, logs or exports the value (seed 003's masking rule, widened
//! to command lines). Over-masking is the accepted error.
//!
//! Rules (table-tested below):
//! - `--token=v`, `--db-password=v`, `-api_key=v`: a flag whose name looks
//!   secret ([`secret_name`]) keeps its name, loses its value;
//! - `--password v`, `--token v`: the same flag without `=` masks the next
//!   argument (unless that one is another `--flag`);
//! - `-u user:pass`, `--user user:pass`, `--proxy-user …`: the part after `:`;
//! - `PASSWORD=v`, `GITHUB_TOKEN=v`, `AWS_SECRET_ACCESS_KEY=v`: an
//!   environment assignment whose name looks secret;
//! - `scheme://user:pass@host` and `scheme://token@host` anywhere in an
//!   argument: the password, or the whole user part when there is no
//!   password (tokens are often passed as the user name);
//! - `Authorization: Bearer v`, `X-Api-Key: v`, `Cookie: v` anywhere in an
//!   argument (curl/wget headers): the header value (a scheme word such as
//!   `Bearer` or `Basic` is kept);
//! - a whole argument that starts like a well-known token (`ghp_`,
//!   `github_pat_`, `glpat-`, `xoxb-`, `sk-`, `AKIA`);
//! - an argument holding whitespace (a `sh -c` script, a header) gets the
//!   same rules word by word (quotes around a word are kept), and secret
//!   headers (`Authorization: Bearer v`) anywhere in it.

/// What a masked value becomes.
pub const MASK: &str = "********";

/// Does this flag or variable name look like it holds a secret?
/// (seed 003: PASS|SECRET|TOKEN|KEY|PRIVATE|CREDENTIAL, plus auth names.)
pub fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    const PARTS: [&str; 8] = [
        "pass",
        "secret",
        "token",
        "key",
        "private",
        "credential",
        "authorization",
        "cookie",
    ];
    PARTS.iter().any(|p| n.contains(p)) || matches!(n.as_str(), "auth" | "pwd" | "pw")
}

/// Flags whose next argument is `user:password`.
fn user_pass_flag(arg: &str) -> bool {
    matches!(arg, "-u" | "--user" | "--proxy-user" | "-U")
}

/// Split NUL-separated argv bytes (lossy UTF-8) and mask it.
pub fn parse_args(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    let args = bytes
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    mask_args(args)
}

/// Mask every secret-looking value of `args` (see the module rules).
pub fn mask_args(args: Vec<String>) -> Vec<String> {
    args.into_iter()
        .map(|a| {
            if a.contains(char::is_whitespace) && !a.trim().is_empty() {
                mask_script(&a)
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .pipe(mask_words)
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

/// An argument with words in it (a shell script, a header): headers
/// first, then the word rules on its words, separators and quotes kept.
fn mask_script(arg: &str) -> String {
    let mut arg = arg.to_owned();
    mask_headers_anywhere(&mut arg);
    // Split into (separator, word) runs; a quoted part belongs to its
    // word, spaces and all (`--password="a b"` is one word).
    let is_sep = |c: char| c.is_whitespace() || matches!(c, ';' | '(' | ')' | '|' | '&' | '`');
    let mut seps = Vec::new();
    let mut words = Vec::new();
    let mut rest = arg.as_str();
    while !rest.is_empty() {
        let sep_len = rest.find(|c: char| !is_sep(c)).unwrap_or(rest.len());
        seps.push(rest[..sep_len].to_owned());
        rest = &rest[sep_len..];
        let mut quote = None;
        let mut word_len = rest.len();
        for (i, c) in rest.char_indices() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '\'' || c == '"' => quote = Some(c),
                None if is_sep(c) => {
                    word_len = i;
                    break;
                }
                None => {}
            }
        }
        words.push(rest[..word_len].to_owned());
        rest = &rest[word_len..];
    }
    let words = mask_words(words);
    let mut out = String::with_capacity(arg.len());
    for (sep, word) in seps.iter().zip(&words) {
        out.push_str(sep);
        out.push_str(word);
    }
    out
}

/// The word rules over a list of words (argv, or a script's words).
fn mask_words(mut args: Vec<String>) -> Vec<String> {
    let mut next_is_secret = false;
    let mut next_is_user_pass = false;
    for arg in &mut args {
        if std::mem::take(&mut next_is_secret) && !arg.starts_with("--") {
            *arg = MASK.to_owned();
            continue;
        }
        if std::mem::take(&mut next_is_user_pass) {
            if let Some(i) = arg.find(':') {
                arg.replace_range(i + 1.., MASK);
            }
            continue;
        }
        if arg.starts_with('-') {
            let name = arg.trim_start_matches('-');
            match name.split_once('=') {
                Some((n, _)) if secret_name(n) => {
                    let keep = arg.len() - name.len() + n.len() + 1;
                    arg.replace_range(keep.., MASK);
                    continue;
                }
                None if secret_name(name) && arg.len() > 1 => {
                    next_is_secret = true;
                    continue;
                }
                None if user_pass_flag(arg) => {
                    next_is_user_pass = true;
                    continue;
                }
                _ => {}
            }
        }
        if let Some((n, _)) = arg.split_once('=') {
            if is_env_name(n) && secret_name(n) {
                let keep = n.len() + 1;
                arg.replace_range(keep.., MASK);
                continue;
            }
        }
        if known_token(arg) {
            *arg = MASK.to_owned();
            continue;
        }
        mask_url_credentials(arg);
        mask_header(arg);
    }
    args
}

fn is_env_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn known_token(arg: &str) -> bool {
    const PREFIXES: [&str; 9] = [
        "ghp_",
        "gho_",
        "ghs_",
        "ghu_",
        "github_pat_",
        "glpat-",
        "xoxb-",
        "xoxp-",
        "sk-",
    ];
    let aws = arg.len() == 20
        && arg.starts_with("AKIA")
        && arg
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    aws || (arg.len() >= 16 && PREFIXES.iter().any(|p| arg.starts_with(p)))
}

/// `scheme://user:pass@host` → `scheme://user:********@host`;
/// `scheme://token@host` → `scheme://********@host`. Every URL in `arg`.
fn mask_url_credentials(arg: &mut String) {
    let mut from = 0;
    while let Some(i) = arg[from..].find("://") {
        let start = from + i + 3;
        let end = arg[start..]
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .map_or(arg.len(), |e| start + e);
        if let Some(at) = arg[start..end].rfind('@') {
            let at = start + at;
            let user_end = arg[start..at].find(':').map_or(start, |c| start + c + 1);
            if arg[user_end..at] != *MASK {
                arg.replace_range(user_end..at, MASK);
            }
            from = user_end + MASK.len();
        } else {
            from = end;
        }
        if from >= arg.len() {
            break;
        }
    }
}

/// Secret headers anywhere in a longer argument: the value after
/// `authorization:` (a scheme word kept), `x-api-key:`, `cookie:`, ... up
/// to the next quote or the end.
fn mask_headers_anywhere(arg: &mut String) {
    const NAMES: [&str; 6] = [
        "authorization:",
        "api-key:",
        "api_key:",
        "cookie:",
        "private-token:",
        "auth-token:",
    ];
    let mut from = 0;
    loop {
        let lower = arg.to_ascii_lowercase();
        let Some((at, name)) = NAMES
            .iter()
            .filter_map(|n| lower[from..].find(n).map(|i| (from + i, n.len())))
            .min()
        else {
            return;
        };
        let mut start = at + name;
        start += arg[start..].len() - arg[start..].trim_start().len();
        let end = arg[start..]
            .find(['\'', '"', '\n'])
            .map_or(arg.len(), |e| start + e);
        let value = &arg[start..end];
        if let Some((scheme, cred)) = value.split_once(' ') {
            if !cred.trim().is_empty() && scheme.chars().all(|c| c.is_ascii_alphabetic()) {
                start += scheme.len() + 1;
            }
        }
        if start < end && arg[start..end] != *MASK {
            arg.replace_range(start..end, MASK);
            from = start + MASK.len();
        } else {
            from = end.max(at + name);
        }
        if from >= arg.len() {
            return;
        }
    }
}

/// `Authorization: Bearer v` → `Authorization: Bearer ********`, and any
/// header whose name looks secret (`X-Api-Key: v`, `Cookie: v`).
fn mask_header(arg: &mut String) {
    let Some(colon) = arg.find(':') else {
        return;
    };
    let name = arg[..colon].rsplit(['=', ' ']).next().unwrap_or("");
    let looks_like_header = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !looks_like_header || !secret_name(name) {
        return;
    }
    let rest = &arg[colon + 1..];
    let value_start = colon + 1 + (rest.len() - rest.trim_start().len());
    let value = &arg[value_start..];
    if value.is_empty() {
        return;
    }
    // Keep an auth scheme word (Bearer, Basic, token, ...), mask the rest.
    let keep = match value.split_once(' ') {
        Some((scheme, cred))
            if !cred.is_empty() && scheme.chars().all(|c| c.is_ascii_alphabetic()) =>
        {
            value_start + scheme.len() + 1
        }
        _ => value_start,
    };
    arg.replace_range(keep.., MASK);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(args: &[&str]) -> Vec<String> {
        mask_args(args.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn masking_table() {
        let cases: &[(&[&str], &[&str])] = &[
            // flag=value
            (&["app", "--token=abc123"], &["app", "--token=********"]),
            (&["app", "--db-password=hunter2"], &["app", "--db-password=********"]),
            (&["app", "-api_key=k"], &["app", "-api_key=********"]),
            (&["app", "--client-secret=s3"], &["app", "--client-secret=********"]),
            (&["app", "--private-key=pk"], &["app", "--private-key=********"]),
            // flag value
            (&["mysql", "--password", "hunter2", "db"], &["mysql", "--password", "********", "db"]),
            (&["gh", "--token", "abc", "x"], &["gh", "--token", "********", "x"]),
            (&["app", "--password", "--verbose"], &["app", "--password", "--verbose"]),
            // user:pass flags
            (&["curl", "-u", "bob:pw", "http://h/"], &["curl", "-u", "bob:********", "http://h/"]),
            (&["curl", "--user", "bob"], &["curl", "--user", "bob"]),
            // environment assignments
            (&["env", "PASSWORD=x", "sh"], &["env", "PASSWORD=********", "sh"]),
            (&["env", "GITHUB_TOKEN=ghx", "gh"], &["env", "GITHUB_TOKEN=********", "gh"]),
            (&["env", "AWS_SECRET_ACCESS_KEY=a/b", "aws"], &["env", "AWS_SECRET_ACCESS_KEY=********", "aws"]),
            (&["env", "API_KEY=", "x"], &["env", "API_KEY=********", "x"]),
            (&["env", "HOME=/root", "x"], &["env", "HOME=/root", "x"]),
            (&["make", "CFLAGS=-O2"], &["make", "CFLAGS=-O2"]),
            // URLs with credentials
            (&["git", "clone", "https://user:pass@github.com/o/r"], &["git", "clone", "https://user:********@github.com/o/r"]),
            (&["git", "clone", "https://ghtoken@github.com/o/r"], &["git", "clone", "https://********@github.com/o/r"]),
            (&["app", "--url=postgres://u:p@db:5432/x"], &["app", "--url=postgres://u:********@db:5432/x"]),
            (&["x", "a=http://u:p@h,b=ftp://v:q@g/"], &["x", "a=http://u:********@h,b=ftp://v:********@g/"]),
            (&["wget", "http://example.test/a@b"], &["wget", "http://example.test/a@b"]),
            (&["wget", "http://127.0.0.1:8080/x"], &["wget", "http://127.0.0.1:8080/x"]),
            // headers
            (&["curl", "-H", "Authorization: Bearer eyJabc"], &["curl", "-H", "Authorization: Bearer ********"]),
            (&["curl", "--header=authorization: Basic dXNlcjpwYXNz"], &["curl", "--header=authorization: Basic ********"]),
            (&["curl", "-H", "X-Api-Key: k123"], &["curl", "-H", "X-Api-Key: ********"]),
            (&["curl", "-H", "Cookie: session=abc"], &["curl", "-H", "Cookie: ********"]),
            (&["curl", "-H", "Accept: text/html"], &["curl", "-H", "Accept: text/html"]),
            // well-known token shapes
            (&["x", "ghp_0123456789abcdefghij"], &["x", "********"]),
            (&["x", "AKIAABCDEFGHIJKLMNOP"], &["x", "********"]),
            // inside a shell script (one argument)
            (&["sh", "-c", "env API_TOKEN=s3 /bin/x --password p2 https://b:p3@h/x; exit 0"],
             &["sh", "-c", "env API_TOKEN=******** /bin/x --password ******** https://b:********@h/x; exit 0"]),
            (&["sh", "-c", "curl -H 'Authorization: Bearer abc.def' http://h/"],
             &["sh", "-c", "curl -H 'Authorization: Bearer ********' http://h/"]),
            (&["sh", "-c", "export GITHUB_TOKEN=\"ghx\"; gh"], &["sh", "-c", "export GITHUB_TOKEN=********; gh"]),
            (&["sh", "-c", "mysql --password=\"a b\""], &["sh", "-c", "mysql --password=********"]),
            (&["sh", "-c", "x --token \"a b\" y"], &["sh", "-c", "x --token ******** y"]),
            // untouched
            (&["sh", "-c", "echo hi"], &["sh", "-c", "echo hi"]),
            (&["sh", "-c", "echo hi | nc -w 2 127.0.0.1 80"], &["sh", "-c", "echo hi | nc -w 2 127.0.0.1 80"]),
            (&["ls", "-la", "/tmp"], &["ls", "-la", "/tmp"]),
            (&[], &[]),
        ];
        for (input, want) in cases {
            assert_eq!(masked(input), *want, "input {input:?}");
        }
    }

    #[test]
    fn parses_nul_separated_argv() {
        assert_eq!(
            parse_args(b"wget\0-q\0http://h/\0"),
            ["wget", "-q", "http://h/"]
        );
        assert_eq!(parse_args(b"a\0--token=x\0"), ["a", "--token=********"]);
        // Cut by the kernel's read limit: no trailing NUL.
        assert_eq!(parse_args(b"a\0bc"), ["a", "bc"]);
        assert!(parse_args(b"").is_empty());
        assert_eq!(parse_args(b"\xff\0"), ["\u{fffd}"]);
    }

    #[test]
    fn no_input_panics() {
        for s in [
            "://",
            "a://@",
            "x://u:@",
            "Authorization:",
            "Authorization: ",
            ":",
            "--=",
            "-",
            "=",
            "@://:@",
        ] {
            let _ = masked(&[s, s]);
        }
    }
}
