//! Numbers for the scan, read as `serde_json` reads them: the same branches, the same arithmetic
//! and the same table of powers of ten, so that every number comes out with the same bits.

use super::{Cursor, word_at};
use crate::server::parse::elements::Elem;

/// A JSON number as `serde_json` reads it (its `ParserNumber`, without `arbitrary_precision`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Num {
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Num {
    /// The number as a tensor element, converted as the general parser's `Level` converts it.
    #[inline(always)]
    pub(super) fn element<T: Elem>(self) -> Option<T> {
        match self {
            Num::U64(v) => T::from_u64(v),
            Num::I64(v) => T::from_i64(v),
            Num::F64(v) => T::from_f64(v),
        }
    }
}

impl Cursor<'_> {
    /// A number, after optional whitespace, computed as `serde_json` computes it, branch for
    /// branch: the significand as a `u64` (digits past its range only scale it), then one
    /// multiplication or division by a table power of ten (`f64_from_parts`).
    #[inline]
    pub(super) fn number(&mut self) -> Option<Num> {
        self.ws();
        self.number_here()
    }

    /// The number at the cursor: a short plain one a word at a time ([`short_number_at`]), any
    /// other byte by byte ([`Cursor::long_number`]).
    #[inline(always)]
    pub(super) fn number_here(&mut self) -> Option<Num> {
        match short_number_at(self.b, self.i) {
            Some((n, end)) => {
                self.i = end;
                Some(n)
            }
            None => self.long_number(),
        }
    }

    /// Any number, byte by byte.
    #[inline(never)]
    pub(super) fn long_number(&mut self) -> Option<Num> {
        let b = self.b;
        let mut i = self.i;
        let positive = b.get(i) != Some(&b'-');
        if !positive {
            i += 1;
        }
        let first = *b.get(i)?;
        if !first.is_ascii_digit() {
            return None;
        }
        i += 1;
        let mut significand = u64::from(first - b'0');
        let mut exponent: i32 = 0;
        let mut float = false;
        if first == b'0' {
            if b.get(i).is_some_and(u8::is_ascii_digit) {
                return None;
            }
        } else {
            while let Some(&c @ b'0'..=b'9') = b.get(i) {
                match next_digit(significand, c) {
                    Some(s) => significand = s,
                    None => {
                        // `parse_long_integer`: a float; the remaining digits only scale.
                        float = true;
                        while let Some(b'0'..=b'9') = b.get(i) {
                            exponent = exponent.checked_add(1)?;
                            i += 1;
                        }
                        break;
                    }
                }
                i += 1;
            }
        }
        if b.get(i) == Some(&b'.') {
            float = true;
            i += 1;
            let start = i;
            while let Some(&c @ b'0'..=b'9') = b.get(i) {
                match next_digit(significand, c) {
                    Some(s) => {
                        significand = s;
                        exponent = exponent.checked_sub(1)?;
                        i += 1;
                    }
                    None => {
                        // `parse_decimal_overflow`: the remaining digits are dropped.
                        while let Some(b'0'..=b'9') = b.get(i) {
                            i += 1;
                        }
                        break;
                    }
                }
            }
            if i == start {
                return None;
            }
        }
        if let Some(b'e' | b'E') = b.get(i) {
            float = true;
            i += 1;
            let positive_exp = match b.get(i) {
                Some(b'+') => {
                    i += 1;
                    true
                }
                Some(b'-') => {
                    i += 1;
                    false
                }
                _ => true,
            };
            let mut exp: i32 = match b.get(i) {
                Some(&c @ b'0'..=b'9') => i32::from(c - b'0'),
                _ => return None,
            };
            i += 1;
            while let Some(&c @ b'0'..=b'9') = b.get(i) {
                i += 1;
                match exp
                    .checked_mul(10)
                    .and_then(|e| e.checked_add(i32::from(c - b'0')))
                {
                    Some(e) => exp = e,
                    None => {
                        // `parse_exponent_overflow`: out of range, or zero.
                        if significand != 0 && positive_exp {
                            return None;
                        }
                        while let Some(b'0'..=b'9') = b.get(i) {
                            i += 1;
                        }
                        self.i = i;
                        return Some(Num::F64(if positive { 0.0 } else { -0.0 }));
                    }
                }
            }
            exponent = if positive_exp {
                exponent.saturating_add(exp)
            } else {
                exponent.saturating_sub(exp)
            };
        }
        self.i = i;
        if !float {
            return Some(if positive {
                Num::U64(significand)
            } else {
                // As serde_json: `-0` and values below i64::MIN become floats.
                let negative = (significand as i64).wrapping_neg();
                if negative >= 0 {
                    Num::F64(-(significand as f64))
                } else {
                    Num::I64(negative)
                }
            });
        }
        let f = f64_from_parts(significand, exponent)?;
        Some(Num::F64(if positive { f } else { -f }))
    }
}

/// A number at `at` of up to seven integer digits, optionally with a point and up to seven more
/// (what clients send nearly always), with a sign or not and no exponent, and where it ends:
/// each run of digits found and valued in a few word operations, without a branch per digit.
/// `None` for any other number and wherever fewer than eight bytes are left to read at once:
/// [`Cursor::long_number`] reads those. The value is the one `long_number` gives, by the same
/// arithmetic: the significand is exact either way, and a fraction divides it by the same power
/// of ten.
#[inline(always)]
pub(super) fn short_number_at(b: &[u8], at: usize) -> Option<(Num, usize)> {
    let negative = b.get(at) == Some(&b'-');
    let start = at + usize::from(negative);
    let word = word_at(b, start)?;
    let n = leading_digits(word);
    // No digit (not a number), or eight or more (maybe past seven digits' exactness here).
    if n == 0 || n == 8 || (n > 1 && b[start] == b'0') {
        return None;
    }
    let int = digits_value(word, n);
    let mut end = start + n;
    let mut fraction = None;
    if b[end] == b'.' {
        let word = word_at(b, end + 1)?;
        let m = leading_digits(word);
        if m == 0 || m == 8 {
            return None;
        }
        fraction = Some((digits_value(word, m), m));
        end += 1 + m;
    }
    if let Some(b'e' | b'E') = b.get(end) {
        return None;
    }
    let n = match (fraction, negative) {
        (None, false) => Num::U64(int),
        // As `long_number`: `-0` is a float, the rest `i64`s.
        (None, true) if int == 0 => Num::F64(-0.0),
        (None, true) => Num::I64(-(int as i64)),
        (Some((digits, m)), negative) => {
            let f = (int * POW10_U64[m] + digits) as f64 / POW10[m];
            Num::F64(if negative { -f } else { f })
        }
    };
    Some((n, end))
}

/// How many of the word's bytes, from the first, are ASCII digits (8 when all are).
#[inline]
fn leading_digits(word: u64) -> usize {
    // A digit's high nibble is 3, and stays 3 with 6 added (0x3A and above go to 4). A byte of
    // 0xFA or more carries into the next byte, but is itself no digit, so the first non-digit
    // is still found where it is.
    let high = word & 0xF0F0_F0F0_F0F0_F0F0;
    let raised = word.wrapping_add(0x0606_0606_0606_0606) & 0xF0F0_F0F0_F0F0_F0F0;
    let not_digit = (high ^ 0x3030_3030_3030_3030) | (raised ^ 0x3030_3030_3030_3030);
    (not_digit.trailing_zeros() / 8) as usize
}

/// The value of the word's first `n` bytes (1 to 7), all digits, the first most significant.
#[inline]
fn digits_value(word: u64, n: usize) -> u64 {
    // The digits moved up to the word's top, leading zeros below them; the bytes after them
    // (and any borrow their subtraction makes) are shifted out.
    let mut v = word.wrapping_sub(0x3030_3030_3030_3030) << (8 * (8 - n));
    // Pairs, then fours, then all eight, as two-digit, four-digit and eight-digit values.
    v = v.wrapping_mul(10).wrapping_add(v >> 8);
    const MASK: u64 = 0x0000_00FF_0000_00FF;
    const MUL1: u64 = 100 + (1_000_000 << 32);
    const MUL2: u64 = 1 + (10_000 << 32);
    ((v & MASK)
        .wrapping_mul(MUL1)
        .wrapping_add(((v >> 16) & MASK).wrapping_mul(MUL2))
        >> 32)
        & 0xFFFF_FFFF
}

/// `10^m` for the fractions [`short_number_at`] reads.
const POW10_U64: [u64; 8] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000];

/// `significand * 10 + digit`, `None` past `u64::MAX`.
#[inline]
fn next_digit(significand: u64, digit: u8) -> Option<u64> {
    significand
        .checked_mul(10)?
        .checked_add(u64::from(digit - b'0'))
}

/// `serde_json`'s `f64_from_parts` without `float_roundtrip`: `None` where it reports the
/// number out of range.
fn f64_from_parts(significand: u64, mut exponent: i32) -> Option<f64> {
    let mut f = significand as f64;
    loop {
        match POW10.get(exponent.wrapping_abs() as usize) {
            Some(&pow) => {
                if exponent >= 0 {
                    f *= pow;
                    if f.is_infinite() {
                        return None;
                    }
                } else {
                    f /= pow;
                }
                return Some(f);
            }
            None => {
                if f == 0.0 {
                    return Some(f);
                }
                if exponent >= 0 {
                    return None;
                }
                f /= 1e308;
                exponent += 308;
            }
        }
    }
}

/// A JSON number read alone (tests compare it with `serde_json`).
#[cfg(test)]
fn number(text: &str) -> Option<Num> {
    let mut c = Cursor {
        b: text.as_bytes(),
        i: 0,
    };
    let n = c.number()?;
    c.end()?;
    Some(n)
}

/// Powers of ten as `serde_json` has them (each literal correctly rounded).
#[rustfmt::skip]
static POW10: [f64; 309] = [
1e000, 1e001, 1e002, 1e003, 1e004, 1e005, 1e006, 1e007, 1e008, 1e009,
1e010, 1e011, 1e012, 1e013, 1e014, 1e015, 1e016, 1e017, 1e018, 1e019,
1e020, 1e021, 1e022, 1e023, 1e024, 1e025, 1e026, 1e027, 1e028, 1e029,
1e030, 1e031, 1e032, 1e033, 1e034, 1e035, 1e036, 1e037, 1e038, 1e039,
1e040, 1e041, 1e042, 1e043, 1e044, 1e045, 1e046, 1e047, 1e048, 1e049,
1e050, 1e051, 1e052, 1e053, 1e054, 1e055, 1e056, 1e057, 1e058, 1e059,
1e060, 1e061, 1e062, 1e063, 1e064, 1e065, 1e066, 1e067, 1e068, 1e069,
1e070, 1e071, 1e072, 1e073, 1e074, 1e075, 1e076, 1e077, 1e078, 1e079,
1e080, 1e081, 1e082, 1e083, 1e084, 1e085, 1e086, 1e087, 1e088, 1e089,
1e090, 1e091, 1e092, 1e093, 1e094, 1e095, 1e096, 1e097, 1e098, 1e099,
1e100, 1e101, 1e102, 1e103, 1e104, 1e105, 1e106, 1e107, 1e108, 1e109,
1e110, 1e111, 1e112, 1e113, 1e114, 1e115, 1e116, 1e117, 1e118, 1e119,
1e120, 1e121, 1e122, 1e123, 1e124, 1e125, 1e126, 1e127, 1e128, 1e129,
1e130, 1e131, 1e132, 1e133, 1e134, 1e135, 1e136, 1e137, 1e138, 1e139,
1e140, 1e141, 1e142, 1e143, 1e144, 1e145, 1e146, 1e147, 1e148, 1e149,
1e150, 1e151, 1e152, 1e153, 1e154, 1e155, 1e156, 1e157, 1e158, 1e159,
1e160, 1e161, 1e162, 1e163, 1e164, 1e165, 1e166, 1e167, 1e168, 1e169,
1e170, 1e171, 1e172, 1e173, 1e174, 1e175, 1e176, 1e177, 1e178, 1e179,
1e180, 1e181, 1e182, 1e183, 1e184, 1e185, 1e186, 1e187, 1e188, 1e189,
1e190, 1e191, 1e192, 1e193, 1e194, 1e195, 1e196, 1e197, 1e198, 1e199,
1e200, 1e201, 1e202, 1e203, 1e204, 1e205, 1e206, 1e207, 1e208, 1e209,
1e210, 1e211, 1e212, 1e213, 1e214, 1e215, 1e216, 1e217, 1e218, 1e219,
1e220, 1e221, 1e222, 1e223, 1e224, 1e225, 1e226, 1e227, 1e228, 1e229,
1e230, 1e231, 1e232, 1e233, 1e234, 1e235, 1e236, 1e237, 1e238, 1e239,
1e240, 1e241, 1e242, 1e243, 1e244, 1e245, 1e246, 1e247, 1e248, 1e249,
1e250, 1e251, 1e252, 1e253, 1e254, 1e255, 1e256, 1e257, 1e258, 1e259,
1e260, 1e261, 1e262, 1e263, 1e264, 1e265, 1e266, 1e267, 1e268, 1e269,
1e270, 1e271, 1e272, 1e273, 1e274, 1e275, 1e276, 1e277, 1e278, 1e279,
1e280, 1e281, 1e282, 1e283, 1e284, 1e285, 1e286, 1e287, 1e288, 1e289,
1e290, 1e291, 1e292, 1e293, 1e294, 1e295, 1e296, 1e297, 1e298, 1e299,
1e300, 1e301, 1e302, 1e303, 1e304, 1e305, 1e306, 1e307, 1e308,
];

#[cfg(test)]
mod tests {
    use std::fmt;

    use serde::Deserialize;
    use serde::de::{self, Visitor};

    use super::*;
    use crate::server::parse::tests::{Rng, parse};
    use crate::server::tensor::TensorData;

    /// How `serde_json` hands a number to a `deserialize_any` visitor.
    struct Captured(Num);

    impl<'de> Deserialize<'de> for Captured {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Captured, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Captured;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a number")
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Captured, E> {
                    Ok(Captured(Num::U64(v)))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Captured, E> {
                    Ok(Captured(Num::I64(v)))
                }
                fn visit_f64<E: de::Error>(self, v: f64) -> Result<Captured, E> {
                    Ok(Captured(Num::F64(v)))
                }
            }
            d.deserialize_any(V)
        }
    }

    fn same_number(a: Num, b: Num) -> bool {
        match (a, b) {
            (Num::F64(a), Num::F64(b)) => a.to_bits() == b.to_bits(),
            (a, b) => a == b,
        }
    }

    const EDGE_NUMBERS: &[&str] = &[
        "0",
        "-0",
        "0.0",
        "-0.0",
        "0e0",
        "-0E-0",
        "1",
        "-1",
        "1.5",
        "1E+2",
        "1e-2",
        "2.5e+10",
        "17.99",
        "0.1",
        "0.30000000000000004",
        "1e-45",
        "1.4e-45",
        "1.401298464324817e-45",
        "7e-46",
        "3.4028235e38",
        "3.4028234663852886e38",
        "3.4028236e38",
        "1e39",
        "-3.4028235e38",
        "1.1754944e-38",
        "16777216",
        "16777217",
        "16777219",
        "9007199254740993",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        "123456789012345678901234567890",
        "4.9e-324",
        "5e-324",
        "2.2250738585072014e-308",
        "1.7976931348623157e308",
        "1.7976931348623159e308",
        "1e308",
        "1e309",
        "1e-400",
        "-1e-400",
        "1e-330",
        "0e400",
        "1.00000005960464477539062501",
        "1.000000059604644775390625",
        "0.000000000000000000000000000000000000000000001",
        "12345678901234567890.5",
        "1.2345678901234567890e5",
        "99999999999999999999e-5",
        "1e2147483647",
        "1e2147483648",
        "1e-2147483648",
        "0e99999999999",
        // Not numbers: both must refuse them.
        "00",
        "01",
        "-",
        "+1",
        ".5",
        "1.",
        "1.e5",
        "1e",
        "1e+",
        "--1",
        "0x10",
        "1_000",
    ];

    /// Number texts as clients write them, and some no client would.
    fn number_texts(rng: &mut Rng, count: usize) -> Vec<String> {
        let mut texts: Vec<String> = EDGE_NUMBERS.iter().map(|s| s.to_string()).collect();
        while texts.len() < count {
            let f32_value = f32::from_bits(rng.next() as u32);
            let f64_value = f64::from_bits(rng.next());
            let text = match rng.below(10) {
                _ if !f32_value.is_finite() || !f64_value.is_finite() => continue,
                0 => format!("{f32_value}"),
                1 => format!("{f32_value:e}"),
                2 => format!("{f32_value:?}"),
                // numpy float32 -> Python float -> json.dumps: the f32 value, 17 digits.
                3 => format!("{:?}", f64::from(f32_value)),
                4 => format!("{f64_value:e}"),
                5 => format!("{f64_value:.16e}"),
                6 => format!("{}", rng.next() as i64 >> rng.below(64)),
                7 => format!(
                    "{:.*}",
                    rng.below(8) as usize,
                    (rng.below(2_000_000) as f64 - 1e6) / 64.0
                ),
                _ => {
                    // Random digits, point and exponent.
                    let digits = 1 + rng.below(24) as usize;
                    let mut t: String = (0..digits)
                        .map(|_| char::from(b'0' + rng.below(10) as u8))
                        .collect();
                    let t2 = t.trim_start_matches('0');
                    t = if t2.is_empty() {
                        "0".into()
                    } else {
                        t2.to_string()
                    };
                    if rng.below(2) == 0 {
                        let frac: String = (0..1 + rng.below(12))
                            .map(|_| char::from(b'0' + rng.below(10) as u8))
                            .collect();
                        t = format!("{t}.{frac}");
                    }
                    if rng.below(2) == 0 {
                        t = format!("{t}e{}", rng.below(700) as i64 - 350);
                    }
                    if rng.below(2) == 0 {
                        format!("-{t}")
                    } else {
                        t
                    }
                }
            };
            texts.push(text);
        }
        texts
    }

    /// A number as clients of every kind write it, followed by what may follow it in a body.
    fn short_texts(rng: &mut Rng, count: usize) -> Vec<String> {
        let digits = |rng: &mut Rng, n: u64| -> String {
            (0..n)
                .map(|_| char::from(b'0' + rng.below(10) as u8))
                .collect()
        };
        let mut texts = number_texts(rng, count / 2);
        while texts.len() < count {
            let mut t = String::new();
            if rng.below(3) == 0 {
                t.push('-');
            }
            // 0 to 9 digits: past the eight bytes read at once, and none at all.
            let n = rng.below(10);
            t += &digits(rng, n);
            match rng.below(4) {
                0 | 1 => {}
                2 => {
                    let m = rng.below(10);
                    t = format!("{t}.{}", digits(rng, m));
                }
                _ => {
                    let m = 1 + rng.below(3);
                    let fraction = digits(rng, m);
                    t = format!("{t}.{fraction}e{}", rng.below(40));
                }
            }
            texts.push(t);
        }
        let ends = [
            ",", "]", " ", "}", "e5", "E-1", ".", "x", "\u{e9}", "0", ".5",
        ];
        texts
            .into_iter()
            .map(|t| format!("{t}{}", ends[rng.below(ends.len() as u64) as usize]))
            .collect()
    }

    #[test]
    fn short_numbers_are_read_as_long_ones() {
        let mut rng = Rng(5);
        let mut short = 0;
        let texts = short_texts(&mut rng, 400_000);
        for text in &texts {
            // Read where eight bytes or more follow, and where fewer do.
            for padding in ["", "       ", ",1,2,3,4,5,6,7,8"] {
                let body = format!("{text}{padding}");
                let mut slow = Cursor {
                    b: body.as_bytes(),
                    i: 0,
                };
                let want = slow.long_number();
                if let Some((got, end)) = short_number_at(body.as_bytes(), 0) {
                    short += 1;
                    let same = want.is_some_and(|want| same_number(got, want));
                    assert!(same, "{body:?}: {got:?} != {want:?}");
                    assert_eq!(end, slow.i, "{body:?}");
                }
                // Whichever reads it, the cursor's own reading is the long one's.
                let mut either = Cursor {
                    b: body.as_bytes(),
                    i: 0,
                };
                let got = either.number_here();
                assert_eq!(got.is_some(), want.is_some(), "{body:?}");
                if let (Some(got), Some(want)) = (got, want) {
                    assert!(same_number(got, want), "{body:?}: {got:?} != {want:?}");
                    assert_eq!(either.i, slow.i, "{body:?}");
                }
            }
        }
        // The eight-byte reading is taken for a good share of these, not skipped.
        assert!(short > texts.len() / 2, "{short} of {}", texts.len() * 3);
    }

    #[test]
    fn numbers_are_read_as_serde_json_reads_them() {
        let mut rng = Rng(7);
        for text in number_texts(&mut rng, 300_000) {
            let reference = serde_json::from_str::<Captured>(&text).map(|c| c.0);
            match (number(&text), reference) {
                (Some(got), Ok(want)) => {
                    assert!(same_number(got, want), "{text}: {got:?} != {want:?}")
                }
                (Some(got), Err(e)) => panic!("{text}: read as {got:?}, serde_json says {e}"),
                (None, Ok(want)) => panic!("{text}: not read directly, serde_json reads {want:?}"),
                (None, Err(_)) => {}
            }
        }
    }

    #[test]
    fn the_power_table_is_serde_jsons() {
        for (i, &pow) in POW10.iter().enumerate() {
            let want: f64 = serde_json::from_str(&format!("1e{i}")).unwrap();
            assert_eq!(pow.to_bits(), want.to_bits(), "1e{i}");
            assert_eq!(
                pow.to_bits(),
                format!("1e{i}").parse::<f64>().unwrap().to_bits()
            );
        }
    }

    #[test]
    fn fp32_data_is_what_serde_json_gives() {
        let mut rng = Rng(11);
        let texts: Vec<String> = number_texts(&mut rng, 20_000)
            .into_iter()
            .filter(|t| serde_json::from_str::<f64>(t).is_ok())
            .collect();
        for chunk in texts.chunks(1000) {
            for datatype in ["FP32", "FP64", "FP16"] {
                let body = format!(
                    r#"{{"inputs":[{{"name":"X","shape":[{}],"datatype":"{datatype}","data":[{}]}}]}}"#,
                    chunk.len(),
                    chunk.join(",")
                );
                let request = parse(&body).unwrap();
                let data = &request.inputs[0].data;
                for (i, text) in chunk.iter().enumerate() {
                    let want = serde_json::from_str::<f64>(text).unwrap();
                    let same = match data {
                        TensorData::Fp32(v) => v[i].to_bits() == (want as f32).to_bits(),
                        TensorData::Fp64(v) => v[i].to_bits() == want.to_bits(),
                        TensorData::Fp16(v) => {
                            v[i].to_bits() == half::f16::from_f64(want).to_bits()
                        }
                        other => panic!("{other:?}"),
                    };
                    assert!(same, "{datatype} {text}");
                }
            }
        }
        let edges = parse(
            r#"{"inputs":[{"name":"X","shape":[6],"datatype":"FP32","data":[-0.0,1e-45,3.4028235e38,16777217,-0,8e-46]}]}"#,
        )
        .unwrap();
        let TensorData::Fp32(v) = &edges.inputs[0].data else {
            panic!()
        };
        let bits: Vec<u32> = v.iter().map(|f| f.to_bits()).collect();
        assert_eq!(
            bits,
            [
                (-0.0f32).to_bits(),
                1,
                f32::MAX.to_bits(),
                16777216f32.to_bits(),
                (-0.0f32).to_bits(),
                1,
            ]
        );
    }

    #[test]
    fn integer_data_is_range_checked_the_same_way() {
        for (datatype, data, ok) in [
            ("INT8", "[-128,127,0,-0,1e2,100.0]", true),
            ("INT8", "[1,128]", false),
            ("INT8", "[1,-129]", false),
            ("INT8", "[1,1.5]", false),
            ("INT8", "[1,1e3]", false),
            ("UINT8", "[0,255]", true),
            ("UINT8", "[0,-1]", false),
            ("UINT64", "[0,18446744073709551615]", true),
            ("UINT64", "[0,18446744073709551616]", false),
            ("INT64", "[-9223372036854775808,9223372036854775807]", true),
            ("INT64", "[0,9223372036854775808]", false),
            ("INT32", "[1,2147483648]", false),
            ("BOOL", "[true,false]", true),
            ("BOOL", "[true,0]", false),
            ("BYTES", r#"["a","b"]"#, true),
            ("BYTES", r#"["a\"","\u00e9"]"#, true),
            ("FP32", r#"[1,"2"]"#, false),
            ("FP32", "[1,null]", false),
            ("FP32", "[1,{}]", false),
            ("FP32", "[1,1e400]", false),
        ] {
            let n = data.matches(',').count() + 1;
            let body = format!(
                r#"{{"inputs":[{{"name":"X","shape":[{n}],"datatype":"{datatype}","data":{data}}}]}}"#
            );
            let result = parse(&body);
            assert_eq!(result.is_ok(), ok, "{datatype} {data}: {result:?}");
            if let Err(e) = result {
                assert!(
                    e.contains("input 'X'") || e.contains("number out of range"),
                    "{e}"
                );
            }
        }
    }
}
