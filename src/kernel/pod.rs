//! Plain-old-data helpers for the bindgen ABI types: map keys and values
//! as bytes, and the kernel's fixed-size C strings.

/// The bytes of a repr(C) ABI value (a map key or value).
pub fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: plain repr(C) bindgen structs, read as bytes.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// An ABI value read back from bytes; `None` if there are too few.
pub fn from_bytes<T: Copy>(b: &[u8]) -> Option<T> {
    (b.len() >= std::mem::size_of::<T>()).then(|| {
        // SAFETY: length checked; bindgen structs are valid for any bits.
        unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) }
    })
}

/// A NUL-terminated C string (comm, user name, reason), not guaranteed
/// to be UTF-8.
pub fn c_str(raw: &[libc::c_char]) -> String {
    let len = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    // SAFETY: c_char is one byte (i8 or u8), so the first `len` of them
    // are `len` bytes of the same memory. (No copy before the UTF-8 check:
    // once per event.)
    let bytes = unsafe { std::slice::from_raw_parts(raw.as_ptr().cast::<u8>(), len) };
    String::from_utf8_lossy(bytes).into_owned()
}

/// `s` as a C string of N bytes: cut at a char boundary, NUL-terminated.
pub fn to_c_str<const N: usize>(s: &str) -> [libc::c_char; N] {
    let mut out = [0 as libc::c_char; N];
    let mut end = s.len().min(N - 1);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    for (d, b) in out.iter_mut().zip(s.as_bytes()[..end].iter()) {
        *d = *b as libc::c_char;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_strings_round_trip_and_cut_at_char_boundaries() {
        let c: [libc::c_char; 8] = to_c_str("héllo wörld");
        assert_eq!(c_str(&c), "héllo "); // 7 bytes and the NUL
        let c: [libc::c_char; 4] = to_c_str("aéb");
        assert_eq!(c_str(&c), "aé");
    }

    #[test]
    fn short_input_is_none() {
        assert_eq!(from_bytes::<u64>(&[1, 2, 3]), None);
        assert_eq!(from_bytes::<u32>(bytes_of(&7u32)), Some(7));
    }
}
