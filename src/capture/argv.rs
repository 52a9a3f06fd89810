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
//!   headers (`Authorization: Bearer v`) anywhere in it;
//! - `name=value` pairs anywhere in a word whose name looks secret: URL
//!   query and fragment parameters (`?api_key=v`, `#access_token=v`,
//!   pre-signed URLs' `sig=`/`X-Amz-Signature=`), form
//!   bodies (`user=u&password=v`), `:_authToken=v`, `-Dx.keyPassword=v`;
//! - JSON and dict pairs (`{"password": "v"}`, `'token': 'v'`);
//! - a header name as its own word (`Authorization:` `Bearer` `v`): the
//!   value words after it;
//! - `-p v`/`-pv` after a program whose `-p` is a password (`mysql*`,
//!   `mariadb*`, `sshpass`, `mongo*`, `7z`, any `login` subcommand such as
//!   `docker login`), `-P v` after `zip`/`unzip`/`sqlcmd`/`bcp`, `-N`/`-P`
//!   after `ssh-keygen`, `-a v` after `redis-cli`, `--body v` after
//!   `gh secret`; `-ubob:v`, `--user=bob:v` (curl), `-U bob%v` (smbclient);
//! - positional secrets: `vault login TOKEN`, `openssl passwd PW…`;
//! - a config key after `set`/`config` whose last part looks secret
//!   (`npm config set //reg/:_authToken TOKEN`): the next word;
//! - the word the kernel's 1 KiB read cut through (argv has no final NUL):
//!   whole, since its end (a password's rest) is unknown.

/// What a masked value becomes.
pub const MASK: &str = "********";

/// Does this flag or variable name look like it holds a secret?
/// (seed 003: PASS|SECRET|TOKEN|KEY|PRIVATE|CREDENTIAL, plus auth names.)
pub fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    const PARTS: [&str; 11] = [
        "pass", "cred", "secret", "token", "key", "private", "authoriz", "cookie", "bearer", "pwd",
        "jwt",
    ];
    // `auth` (oauth, x-auth, _auth) but not `author` (git --author).
    let auth = n.contains("auth") && !n.contains("author");
    PARTS.iter().any(|p| n.contains(p))
        || auth
        || matches!(n.as_str(), "pw" | "sig")
        || n.contains("signature")
}

/// The flags that take a password after this program or subcommand word
/// (`-p` for mysql, sshpass, mongosh and `… login`, `-P` for zip and
/// sqlcmd, `-N`/`-P` for ssh-keygen, `-a` for redis-cli, `--body`/`-b` for
/// `gh secret`); elsewhere `-p` is a port or a path and stays.
fn password_flags_for(word: &str) -> Option<&'static [&'static str]> {
    let base = word.rsplit('/').next().unwrap_or(word);
    Some(match base {
        "sshpass" | "login" | "mongo" | "mongosh" | "mongodump" | "mongorestore"
        | "mongoexport" | "mongoimport" => &["-p"],
        b if b.starts_with("mysql") || b.starts_with("mariadb") => &["-p"],
        // 7-Zip: `-pPW` (attached) or `-p PW`.
        "7z" | "7za" | "7zr" | "7zz" => &["-p"],
        "zip" | "unzip" | "zipcloak" | "sqlcmd" | "bcp" => &["-P"],
        "ssh-keygen" => &["-N", "-P"],
        "redis-cli" => &["-a"],
        "secret" => &["--body", "-b"],
        _ => return None,
    })
}

enum FlagValue {
    /// The flag alone: its value is the next word.
    Next,
    /// The value starts here in the same word (`-pPW`, `--body=PW`).
    At(usize),
}

/// Is `arg` the password flag `flag`, and where is its value? A short flag
/// takes its value attached (`-pPW`), a long one after `=`.
fn flag_value(arg: &str, flag: &str) -> Option<FlagValue> {
    let rest = arg.strip_prefix(flag)?;
    if rest.is_empty() {
        Some(FlagValue::Next)
    } else if flag.len() == 2 {
        Some(FlagValue::At(flag.len()))
    } else {
        rest.starts_with('=')
            .then_some(FlagValue::At(flag.len() + 1))
    }
}

/// Subcommands whose positional arguments are secrets: the first one
/// (`vault login TOKEN`) or all (`openssl passwd PW…`).
fn secret_positionals(prev: &str, word: &str) -> Option<Positionals> {
    let prev = prev.rsplit('/').next().unwrap_or(prev);
    match (prev, word) {
        ("vault", "login") => Some(Positionals::First),
        ("openssl", "passwd") => Some(Positionals::All),
        _ => None,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Positionals {
    First,
    All,
}

/// A config key given as its own word after `set`/`config` (`npm config
/// set //reg/:_authToken TOKEN`, `git config x.password v`): does its last
/// name part look secret? Then the next word is its value.
fn secret_config_key(prev: &str, word: &str) -> bool {
    matches!(prev, "set" | "config")
        && !word.starts_with('-')
        && !word.contains('=')
        && word.rsplit([':', '/', '.']).next().is_some_and(secret_name)
}

/// Flags whose next argument is `user:password`.
fn user_pass_flag(arg: &str) -> bool {
    matches!(arg, "-u" | "--user" | "--proxy-user" | "-U")
}

/// Split NUL-separated argv bytes (lossy UTF-8) and mask it. argv always
/// ends with a NUL: bytes that do not were cut by the kernel's read limit,
/// and the word the cut went through is masked whole.
pub fn parse_args(bytes: &[u8]) -> Vec<String> {
    let cut = bytes.last().is_some_and(|&b| b != 0);
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    let args = bytes
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mut args = mask_args(args);
    if cut {
        if let Some(last) = args.last_mut() {
            let from = last.rfind(char::is_whitespace).map_or(0, |i| {
                i + last[i..].chars().next().map_or(1, char::len_utf8)
            });
            last.replace_range(from.., MASK);
        }
    }
    args
}

/// Mask every secret-looking value of `args` (see the module rules).
pub fn mask_args(args: Vec<String>) -> Vec<String> {
    args.into_iter()
        .map(|mut a| {
            mask_quoted_pairs(&mut a);
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
    let mut next_is_header_value = false;
    let mut password_flags: &[&str] = &[];
    let mut positionals: Option<Positionals> = None;
    let mut prev = String::new();
    for arg in &mut args {
        let prev_word = std::mem::replace(&mut prev, arg.clone());
        if std::mem::take(&mut next_is_secret) && !arg.starts_with("--") {
            *arg = MASK.to_owned();
            continue;
        }
        if std::mem::take(&mut next_is_user_pass) {
            // `bob:pw`, or smbclient's `bob%pw`.
            if let Some(i) = arg.find(':').or_else(|| arg.find('%')) {
                arg.replace_range(i + 1.., MASK);
            }
            continue;
        }
        if let Some(which) = positionals {
            if !arg.starts_with('-') {
                *arg = MASK.to_owned();
                if which == Positionals::First {
                    positionals = None;
                }
                continue;
            }
        }
        if std::mem::take(&mut next_is_header_value) {
            // `Authorization:` `Bearer` `v`: keep the scheme word, mask on.
            if is_auth_scheme(arg) {
                next_is_header_value = true;
            } else {
                *arg = MASK.to_owned();
            }
            continue;
        }
        if let Some(value) = password_flags.iter().find_map(|f| flag_value(arg, f)) {
            match value {
                FlagValue::Next => next_is_secret = true,
                FlagValue::At(i) => arg.replace_range(i.., MASK),
            }
            continue;
        }
        if let Some(flags) = password_flags_for(arg) {
            password_flags = flags;
        }
        if let Some(which) = secret_positionals(&prev_word, arg) {
            positionals = Some(which);
            continue;
        }
        if secret_config_key(&prev_word, arg) {
            next_is_secret = true;
            continue;
        }
        if let Some(name) = arg.strip_suffix(':') {
            if is_header_name(name) && secret_name(name) {
                next_is_header_value = true;
                continue;
            }
        }
        if arg.starts_with("-u") && !arg.starts_with("--") && arg.len() > 2 {
            // curl -ubob:pw
            if let Some(i) = arg.find(':') {
                arg.replace_range(i + 1.., MASK);
                continue;
            }
        }
        if arg.starts_with('-') {
            let name = arg.trim_start_matches('-');
            match name.split_once('=') {
                Some((n, _)) if secret_name(n) => {
                    let keep = arg.len() - name.len() + n.len() + 1;
                    arg.replace_range(keep.., MASK);
                    continue;
                }
                // --user=bob:pw
                Some((n, v))
                    if user_pass_flag(&arg[..arg.len() - name.len() + n.len()])
                        && v.contains(':') =>
                {
                    let i = arg.len() - v.len() + v.find(':').unwrap_or(0);
                    arg.replace_range(i + 1.., MASK);
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
        mask_params(arg);
    }
    args
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn is_auth_scheme(word: &str) -> bool {
    matches!(
        word.to_ascii_lowercase().as_str(),
        "bearer" | "basic" | "token" | "digest" | "negotiate" | "apikey"
    )
}

/// Characters of a parameter or variable name.
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

/// Where a `name=value` value ends (query, form, fragment, list, quote).
fn is_value_end(b: u8) -> bool {
    matches!(b, b'&' | b'#' | b';' | b',' | b'\'' | b'"' | b')' | b'}') || b.is_ascii_whitespace()
}

/// Every `name=value` in `arg` whose name looks secret (`?api_key=v&…`,
/// `#access_token=v`, `user=u&password=v`, `:_authToken=v`): the value.
fn mask_params(arg: &mut String) {
    let mut from = 0;
    while let Some(i) = arg[from..].find('=') {
        let eq = from + i;
        let bytes = arg.as_bytes();
        let start = bytes[..eq]
            .iter()
            .rposition(|&b| !is_name_byte(b))
            .map_or(0, |p| p + 1);
        from = eq + 1;
        if start == eq || !secret_name(&arg[start..eq]) {
            continue;
        }
        let end = bytes[eq + 1..]
            .iter()
            .position(|&b| is_value_end(b))
            .map_or(arg.len(), |p| eq + 1 + p);
        if eq + 1 < end && arg[eq + 1..end] != *MASK {
            arg.replace_range(eq + 1..end, MASK);
            from = eq + 1 + MASK.len();
        }
        if from >= arg.len() {
            return;
        }
    }
}

/// JSON and dict pairs whose key looks secret: `"password": "v"`,
/// `'token':'v'`, `"pin": 1234` → the value (quotes kept).
fn mask_quoted_pairs(arg: &mut String) {
    let mut from = 0;
    while let Some(i) = arg[from..].find(':') {
        let colon = from + i;
        from = colon + 1;
        let bytes = arg.as_bytes();
        // The key: a quoted string right before the colon.
        let before = arg[..colon].trim_end();
        let Some(q) = before.bytes().last().filter(|b| matches!(b, b'"' | b'\'')) else {
            continue;
        };
        let Some(open) = before[..before.len() - 1].rfind(q as char) else {
            continue;
        };
        if !secret_name(&before[open + 1..before.len() - 1]) {
            continue;
        }
        // The value: quoted (to its closing quote, escapes skipped) or bare.
        let mut start = colon + 1;
        while start < bytes.len() && bytes[start].is_ascii_whitespace() {
            start += 1;
        }
        let (start, end) = match bytes.get(start) {
            Some(&vq) if vq == b'"' || vq == b'\'' => {
                let mut j = start + 1;
                while j < bytes.len() && bytes[j] != vq {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
                (start + 1, j.min(bytes.len()))
            }
            Some(_) => {
                let end = bytes[start..]
                    .iter()
                    .position(|&b| matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace())
                    .map_or(bytes.len(), |p| start + p);
                (start, end)
            }
            None => continue,
        };
        if start < end && arg[start..end] != *MASK {
            arg.replace_range(start..end, MASK);
            from = start + MASK.len();
        }
        if from >= arg.len() {
            return;
        }
    }
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
            // program-specific password flags and positionals (review, session 5)
            (&["zip", "-P", "pw1", "a.zip", "f"], &["zip", "-P", "********", "a.zip", "f"]),
            (&["7z", "a", "-ppw2", "a.7z"], &["7z", "a", "-p********", "a.7z"]),
            (&["ssh-keygen", "-N", "pw3", "-f", "k"], &["ssh-keygen", "-N", "********", "-f", "k"]),
            (&["ssh-keygen", "-p", "-P", "old", "-N", "new"], &["ssh-keygen", "-p", "-P", "********", "-N", "********"]),
            (&["sqlcmd", "-S", "db", "-P", "pw4"], &["sqlcmd", "-S", "db", "-P", "********"]),
            (&["mongosh", "-u", "bob", "-p", "pw5"], &["mongosh", "-u", "bob", "-p", "********"]),
            (&["smbclient", "//h/s", "-U", "bob%pw6"], &["smbclient", "//h/s", "-U", "bob%********"]),
            (&["npm", "config", "set", "//reg/:_authToken", "tok7"], &["npm", "config", "set", "//reg/:_authToken", "********"]),
            (&["gh", "secret", "set", "N", "--body", "pw8"], &["gh", "secret", "set", "N", "--body", "********"]),
            (&["gh", "secret", "set", "N", "--body=pw8"], &["gh", "secret", "set", "N", "--body=********"]),
            (&["vault", "login", "tok9", "x"], &["vault", "login", "********", "x"]),
            (&["openssl", "passwd", "-1", "pw10", "pw11"], &["openssl", "passwd", "-1", "********", "********"]),
            (&["app", "--cred", "pw12"], &["app", "--cred", "********"]),
            (&["sh", "-c", "zip -P pw13 a.zip f"], &["sh", "-c", "zip -P ******** a.zip f"]),
            // ... and not elsewhere: -P/-N/-b of other programs stay
            (&["cp", "-P", "src", "dst"], &["cp", "-P", "src", "dst"]),
            (&["find", ".", "-N", "x"], &["find", ".", "-N", "x"]),
            (&["git", "config", "user.name", "bob"], &["git", "config", "user.name", "bob"]),
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
            // -p / -a where the program takes a password there
            (&["sshpass", "-p", "pw1", "ssh", "h"], &["sshpass", "-p", "********", "ssh", "h"]),
            (&["mysql", "-u", "root", "-ppw2", "db"], &["mysql", "-u", "root", "-p********", "db"]),
            (&["docker", "login", "-u", "me", "-p", "pw3", "r.test"], &["docker", "login", "-u", "me", "-p", "********", "r.test"]),
            (&["/usr/bin/redis-cli", "-a", "pw4", "ping"], &["/usr/bin/redis-cli", "-a", "********", "ping"]),
            (&["ssh", "-p", "2222", "h"], &["ssh", "-p", "2222", "h"]),
            (&["mkdir", "-p", "/tmp/x"], &["mkdir", "-p", "/tmp/x"]),
            // user:pass attached or with =
            (&["curl", "-ubob:pw5", "http://h/"], &["curl", "-ubob:********", "http://h/"]),
            (&["curl", "--user=bob:pw6"], &["curl", "--user=bob:********"]),
            (&["curl", "--proxy-user=bob:pw7"], &["curl", "--proxy-user=bob:********"]),
            // more secret names
            (&["env", "MYSQL_PWD=pw8", "mysql"], &["env", "MYSQL_PWD=********", "mysql"]),
            (&["curl", "--oauth2-bearer", "tok9", "http://h/"], &["curl", "--oauth2-bearer", "********", "http://h/"]),
            (&["git", "commit", "--author=A <a@b>"], &["git", "commit", "--author=A <a@b>"]),
            (&["app", "--oauth=x"], &["app", "--oauth=********"]),
            // name=value pairs anywhere in a word
            (&["curl", "https://api.test/v1?api_key=k10&x=1"], &["curl", "https://api.test/v1?api_key=********&x=1"]),
            (&["open", "https://h.test/cb#access_token=t11&state=s"], &["open", "https://h.test/cb#access_token=********&state=s"]),
            (&["curl", "-d", "user=bob&password=pw12", "http://h/"], &["curl", "-d", "user=bob&password=********", "http://h/"]),
            (&["npm", "config", "set", "//r.test/:_authToken=t13"], &["npm", "config", "set", "//r.test/:_authToken=********"]),
            (&["java", "-Djavax.net.ssl.keyStorePassword=pw14", "-jar", "x"], &["java", "-Djavax.net.ssl.keyStorePassword=********", "-jar", "x"]),
            (&["kubectl", "create", "secret", "generic", "s", "--from-literal=password=pw15"], &["kubectl", "create", "secret", "generic", "s", "--from-literal=password=********"]),
            (&["curl", "https://h.test/?q=a=b&page=2"], &["curl", "https://h.test/?q=a=b&page=2"]),
            // pre-signed URLs: Azure SAS, AWS
            (&["curl", "https://a.blob.test/c/b?sv=2020&sig=s21%2F&se=x"], &["curl", "https://a.blob.test/c/b?sv=2020&sig=********&se=x"]),
            (&["curl", "https://s3.test/o?X-Amz-Credential=AK/x&X-Amz-Signature=s22"], &["curl", "https://s3.test/o?X-Amz-Credential=********&X-Amz-Signature=********"]),
            // JSON and dict pairs
            (&["curl", "--data", r#"{"user":"u","password":"pw16"}"#], &["curl", "--data", r#"{"user":"u","password":"********"}"#]),
            (&["curl", "--data", r#"{"token": "t17", "n": 1}"#], &["curl", "--data", r#"{"token": "********", "n": 1}"#]),
            (&["python3", "-c", "f({'api_key': 'k18'})"], &["python3", "-c", "f({'api_key': '********'})"]),
            (&["x", r#"{"pin_secret":1234}"#], &["x", r#"{"pin_secret":********}"#]),
            (&["x", r#"{"a":"b:c"}"#], &["x", r#"{"a":"b:c"}"#]),
            // a header name as its own word
            (&["x", "Authorization:", "Bearer", "t19", "y"], &["x", "Authorization:", "Bearer", "********", "y"]),
            (&["http", "h.test", "X-Api-Key:", "k20"], &["http", "h.test", "X-Api-Key:", "********"]),
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
        // Cut by the kernel's read limit (no trailing NUL): the word the
        // cut went through is masked whole (a password's first bytes).
        assert_eq!(parse_args(b"a\0bc"), ["a", MASK]);
        assert_eq!(
            parse_args(b"git\0clone\0https://bob:hunt"),
            ["git", "clone", MASK]
        );
        assert_eq!(
            parse_args(b"sh\0-c\0echo hi; curl https://bob:hunt"),
            ["sh", "-c", "echo hi; curl ********"]
        );
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
            "'token':",
            "\"token\":\"",
            "\"token\": \"a\\",
            "\"key\":é,",
            "é=é&ké=\u{1F600}",
            "pass=",
            "=pass",
            "-p",
            "-u:",
            "--user=:",
            "Authorization:",
        ] {
            let _ = masked(&[s, s]);
            let _ = masked(&["mysql", s, s]);
            let _ = parse_args(s.as_bytes());
        }
    }
}
