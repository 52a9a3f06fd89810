//! The DNS tunnelling heuristic behind
//! `clawker_egress_agent_dns_suspicious_total{reason}`: a query name that
//! is too long for a name people type (`long`), or whose host part
//! (everything left of the last two labels) looks like encoded data
//! (`encoded`: hex has too many digits, base32 too few vowels, both more
//! entropy than a repeated pattern). Thresholds are in
//! docs/ALERTS.md; the alert counts suspicious names per window, so one odd
//! CDN name does not page anyone.

/// Why a query name looks like data rather than a host name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suspicion {
    /// Longer than [`LONG_NAME`] or with a label longer than [`LONG_LABEL`].
    Long,
    /// A host part of at least [`ENCODED_MIN_LEN`] letters and digits with
    /// at least [`ENTROPY_BITS`] bits of Shannon entropy per character and
    /// either a digit share of [`HEX_DIGITS`] or a vowel share below
    /// [`BASE32_VOWELS`] among its letters.
    Encoded,
}

impl Suspicion {
    pub fn label(self) -> &'static str {
        match self {
            Suspicion::Long => "long",
            Suspicion::Encoded => "encoded",
        }
    }
}

/// Characters in a whole name (tunnels fill names towards the 253 limit).
pub const LONG_NAME: usize = 120;
/// Characters in one label (tunnels fill labels towards the 63 limit).
pub const LONG_LABEL: usize = 50;
/// Host-part letters and digits below which nothing is judged encoded.
pub const ENCODED_MIN_LEN: usize = 24;
/// Bits per character below which the host part is a repeated pattern.
pub const ENTROPY_BITS: f64 = 3.0;
/// Hex-encoded data is ~62% digits; names with an id in them stay below.
pub const HEX_DIGITS: f64 = 0.4;
/// Base32 letters are ~19% vowels (a e i o u); words ~35-45%.
pub const BASE32_VOWELS: f64 = 0.25;

pub fn suspicious(qname: &str) -> Option<Suspicion> {
    let name = qname.trim_end_matches('.');
    if name.len() > LONG_NAME || name.split('.').any(|l| l.len() > LONG_LABEL) {
        return Some(Suspicion::Long);
    }
    let labels: Vec<&str> = name.split('.').collect();
    // Registered domains are not guessed from a suffix list: the last two
    // labels are left out, which only makes short names less suspicious.
    let host: String = labels[..labels.len().saturating_sub(2)]
        .iter()
        .flat_map(|l| l.chars())
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if host.len() < ENCODED_MIN_LEN || entropy(&host) < ENTROPY_BITS {
        return None;
    }
    let digits = host.chars().filter(char::is_ascii_digit).count();
    let letters = host.len() - digits;
    let vowels = host.chars().filter(|c| "aeiou".contains(*c)).count();
    let share = |n: usize, of: usize| n as f64 / of.max(1) as f64;
    (share(digits, host.len()) >= HEX_DIGITS || share(vowels, letters) < BASE32_VOWELS)
        .then_some(Suspicion::Encoded)
}

/// Shannon entropy in bits per byte.
fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[usize::from(b)] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_pass() {
        for name in [
            "github.com",
            "registry.npmjs.org",
            "api.anthropic.com.",
            "d1234abcd.cloudfront.net",
            "ec2-54-23-1-1.compute-1.amazonaws.com",
            "internal-my-loadbalancer-1234567890.us-west-2.elb.amazonaws.com",
            "objects.githubusercontent.com",
            "my-long-service-name.production.example.com",
            "",
            ".",
        ] {
            assert_eq!(suspicious(name), None, "{name}");
        }
    }

    #[test]
    fn encoded_data_is_suspicious() {
        // dnscat2/iodine style: a full label of encoded bytes.
        let long = format!("{}.t.example.com", "a1b2c3d4e5".repeat(6));
        assert_eq!(suspicious(&long), Some(Suspicion::Long));
        let name = format!("{}.example.com", "x.".repeat(70));
        assert_eq!(suspicious(&name), Some(Suspicion::Long));
        // Hex of a secret split into short labels.
        let hex = "6d7973656372.65746b657931.3233343536.exfil.example.com";
        assert_eq!(suspicious(hex), Some(Suspicion::Encoded));
        let b32 = "mzxw6ytboi.ytsmrqgiz.demzrgu3d.t.example.org";
        assert_eq!(suspicious(b32), Some(Suspicion::Encoded));
        // A repeated pattern is neither.
        assert_eq!(suspicious("abababababababababababab.example.com"), None);
    }
}
