//! The direct scan for bodies in the usual form. Every function answers `None` where the general
//! parser must decide: anything malformed, unusual (escapes in strings, duplicate keys, numbers
//! that overflow, deep nesting) or wrong (an element of the wrong type, too many elements). What
//! it does answer is exactly what the general parser gives: same structure, same numbers (the
//! arithmetic of `serde_json`'s number parser, step for step), same element conversions.

mod number;

use self::number::{Num, short_number_at};
use super::capacity_bound;
use super::elements::{Elem, ParsedData, Scalar, Values};
use super::raw::{RawInput, RawOutput, RawRequest, check_shape};
use crate::server::tensor::{DataType, TensorData};

/// Nesting beyond this is left to the general parser (which has its own limit).
const MAX_DEPTH: usize = 32;

pub(super) fn request(body: &[u8], max_elements: usize) -> Option<RawRequest> {
    let mut c = Cursor { b: body, i: 0 };
    let mut request = RawRequest {
        id: None,
        inputs: None,
        outputs: None,
        binary_output: None,
    };
    let mut parameters = false;
    c.object(|c, key| {
        match key {
            "id" if request.id.is_none() => request.id = Some(c.str()?.to_owned()),
            "inputs" if request.inputs.is_none() => {
                let mut inputs = Vec::new();
                c.array(|c| {
                    inputs.push(input(c, max_elements)?);
                    Some(())
                })?;
                request.inputs = Some(inputs);
            }
            "outputs" if request.outputs.is_none() => {
                let mut outputs = Vec::new();
                c.array(|c| {
                    let mut name = None;
                    let mut binary = None;
                    let mut parameters = false;
                    c.object(|c, key| {
                        match key {
                            "name" if name.is_none() => name = Some(c.str()?.to_owned()),
                            "parameters" if !parameters => {
                                parameters = true;
                                binary = c.flag_parameter("binary_data")?;
                            }
                            "name" | "parameters" => return None,
                            _ => c.skip(3)?,
                        }
                        Some(())
                    })?;
                    outputs.push(RawOutput {
                        name: name?,
                        binary: binary.map(Ok),
                    });
                    Some(())
                })?;
                request.outputs = Some(outputs);
            }
            "parameters" if !parameters => {
                parameters = true;
                request.binary_output = c.flag_parameter("binary_data_output")?.map(Ok);
            }
            "id" | "inputs" | "outputs" | "parameters" => return None,
            _ => c.skip(1)?,
        }
        Some(())
    })?;
    c.end()?;
    Some(request)
}

fn input(c: &mut Cursor, max_elements: usize) -> Option<RawInput> {
    let mut name: Option<String> = None;
    let mut shape: Option<Vec<usize>> = None;
    let mut datatype: Option<DataType> = None;
    let mut data: Option<ParsedData> = None;
    // Data sent before its datatype: where it is, read once the datatype is known.
    let mut deferred: Option<(usize, usize)> = None;
    let mut parameters = false;
    let mut binary: Option<u64> = None;
    c.object(|c, key| {
        match key {
            "name" if name.is_none() => name = Some(c.str()?.to_owned()),
            "shape" if shape.is_none() => {
                let mut dims = Vec::new();
                c.array(|c| {
                    // Negative dimensions are errors: the general parser words them.
                    match c.number()? {
                        Num::U64(d) => dims.push(i64::try_from(d).ok()?),
                        Num::I64(_) | Num::F64(_) => return None,
                    }
                    Some(())
                })?;
                shape = Some(check_shape(&dims, max_elements).ok()?);
            }
            "datatype" if datatype.is_none() => {
                datatype = Some(DataType::from_name(c.str()?)?);
            }
            "data" if data.is_none() && deferred.is_none() => {
                if datatype.is_some() {
                    let capacity = shape
                        .as_ref()
                        .map_or(0, |dims| dims.iter().product::<usize>());
                    data = Some(c.data(datatype, capacity, max_elements)?);
                } else {
                    c.ws();
                    let start = c.i;
                    c.skip_array()?;
                    deferred = Some((start, c.i));
                }
            }
            "parameters" if !parameters => {
                parameters = true;
                c.parameters(|c, key| match key {
                    "binary_data_size" if binary.is_none() => match c.number()? {
                        Num::U64(size) => {
                            binary = Some(size);
                            Some(())
                        }
                        Num::I64(_) | Num::F64(_) => None,
                    },
                    "binary_data_size" => None,
                    _ => c.skip(4),
                })?;
            }
            "name" | "shape" | "datatype" | "data" | "parameters" => return None,
            _ => c.skip(3)?,
        }
        Some(())
    })?;
    if let Some((start, end)) = deferred {
        // Typed straight away: the general parser keeps JSON scalars and converts them
        // with the same functions, to the same values.
        let capacity = shape
            .as_ref()
            .map_or(0, |dims| dims.iter().product::<usize>());
        let mut at = Cursor { b: c.b, i: start };
        data = Some(at.data(datatype, capacity, max_elements)?);
        if at.i != end {
            return None;
        }
    }
    Some(RawInput {
        name,
        shape: shape.map(Ok),
        datatype: datatype.map(Ok),
        data,
        binary: binary.map(Ok),
    })
}

pub(super) fn instances(
    body: &[u8],
    datatype: DataType,
    max_elements: usize,
) -> Option<Option<ParsedData>> {
    let mut c = Cursor { b: body, i: 0 };
    let mut data = None;
    c.object(|c, key| {
        match key {
            "instances" if data.is_none() => {
                data = Some(c.data(Some(datatype), 0, max_elements)?);
            }
            "instances" | "inputs" => return None,
            _ => c.skip(1)?,
        }
        Some(())
    })?;
    c.end()?;
    Some(data)
}

/// The eight bytes at `at` as a little-endian word (the first byte lowest), if there are eight.
#[inline(always)]
fn word_at(b: &[u8], at: usize) -> Option<u64> {
    let bytes = b.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// The word's `,` and `]` bytes: the top bit of each set, the rest clear.
#[inline(always)]
fn separators(word: u64) -> u64 {
    bytes_equal(word, b',') | bytes_equal(word, b']')
}

/// The top bit of each byte of `word` that equals `byte`, exactly (no carry crosses a byte).
#[inline(always)]
fn bytes_equal(word: u64, byte: u8) -> u64 {
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    let x = word ^ (0x0101_0101_0101_0101 * u64::from(byte));
    // A byte's top bit ends up set only where the byte was zero: `(x & 0x7F) + 0x7F` sets it
    // for any nonzero low seven bits, `x` itself for the top one.
    !((x & LOW7).wrapping_add(LOW7) | x | LOW7)
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

/// The rectangular nesting of `data`, tracked as the general parser's `NestState` does.
struct Grid<T> {
    out: Vec<T>,
    dims: Vec<Option<usize>>,
    leaf_depth: Option<usize>,
    max_elements: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// Skips whitespace and takes `byte` if it comes next.
    #[inline]
    fn eat(&mut self, byte: u8) -> bool {
        self.ws();
        if self.peek() == Some(byte) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn end(&mut self) -> Option<()> {
        self.ws();
        (self.i == self.b.len()).then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i.checked_add(word.len())?;
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// A string without escapes or control characters, valid UTF-8.
    fn str(&mut self) -> Option<&'a str> {
        if !self.eat(b'"') {
            return None;
        }
        let rest = self.b.get(self.i..)?;
        let len = rest
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        self.i += len + 1;
        std::str::from_utf8(&rest[..len]).ok()
    }

    /// `{ "key": value, ... }`, `value` read by `f` (which sees the cursor just after the
    /// colon).
    fn object(&mut self, mut f: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        if !self.eat(b'{') {
            return None;
        }
        if self.eat(b'}') {
            return Some(());
        }
        loop {
            let key = self.str()?;
            if !self.eat(b':') {
                return None;
            }
            f(self, key)?;
            if self.eat(b',') {
                continue;
            }
            return self.eat(b'}').then_some(());
        }
    }

    /// `[ value, ... ]`, each value read by `f`.
    fn array(&mut self, mut f: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        if !self.eat(b'[') {
            return None;
        }
        if self.eat(b']') {
            return Some(());
        }
        loop {
            f(self)?;
            if self.eat(b',') {
                continue;
            }
            return self.eat(b']').then_some(());
        }
    }

    /// Passes over an array without reading its elements (they are read later, from its
    /// start): only brackets and strings count.
    fn skip_array(&mut self) -> Option<()> {
        let b = self.b;
        let mut i = self.i;
        let mut depth = 0usize;
        if b.get(i) != Some(&b'[') {
            return None;
        }
        loop {
            match *b.get(i)? {
                b'[' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return None;
                    }
                }
                b']' => {
                    depth -= 1;
                    if depth == 0 {
                        self.i = i + 1;
                        return Some(());
                    }
                }
                b'"' => {
                    i += 1;
                    i += b.get(i..)?.iter().position(|&c| c == b'"' || c == b'\\')?;
                    if b[i] != b'"' {
                        return None;
                    }
                }
                b'{' => return None,
                _ => {}
            }
            i += 1;
        }
    }

    /// A `parameters` value: null, or an object whose entries `f` reads. Anything else is
    /// the general parser's.
    fn parameters(&mut self, f: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.ws();
        if self.peek()? == b'n' {
            self.literal(b"null")
        } else {
            self.object(f)
        }
    }

    /// `parameters` with one boolean of interest: `true`, `false` or null (absent).
    fn flag_parameter(&mut self, wanted: &str) -> Option<Option<bool>> {
        let mut value = None;
        let mut seen = false;
        self.parameters(|c, key| {
            if key != wanted {
                return c.skip(4);
            }
            if seen {
                return None;
            }
            seen = true;
            c.ws();
            value = match c.peek()? {
                b't' => Some(true),
                b'f' => Some(false),
                b'n' => None,
                _ => return None,
            };
            c.literal(match value {
                Some(true) => b"true",
                Some(false) => b"false",
                None => b"null",
            })
        })?;
        Some(value)
    }

    /// Any JSON value, checked and dropped.
    fn skip(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        match self.peek()? {
            b'{' => self.object(|c, _| c.skip(depth + 1)),
            b'[' => self.array(|c| c.skip(depth + 1)),
            b'"' => self.str().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(drop),
        }
    }

    /// One element of `data`, converted as the general parser's `Level` converts it.
    #[inline]
    fn scalar<T: Elem>(&mut self, first: u8) -> Option<T> {
        match first {
            b'-' | b'0'..=b'9' => self.long_number()?.element(),
            b't' => {
                self.literal(b"true")?;
                T::from_bool(true)
            }
            b'f' => {
                self.literal(b"false")?;
                T::from_bool(false)
            }
            b'"' => T::from_str(self.str()?),
            _ => None,
        }
    }

    /// A `data` (or `instances`) value: typed when the datatype is known, else JSON scalars.
    fn data(
        &mut self,
        datatype: Option<DataType>,
        capacity: usize,
        max_elements: usize,
    ) -> Option<ParsedData> {
        // Never more than the rest of the body could hold, whatever the shape says.
        let capacity = capacity
            .min(max_elements)
            .min(capacity_bound(self.b.len().saturating_sub(self.i)));
        macro_rules! typed {
            ($t:ty, $variant:ident) => {{
                let (out, dims) = self.elements::<$t>(capacity, max_elements)?;
                (Values::Typed(TensorData::$variant(out)), dims)
            }};
        }
        let (values, dims) = match datatype {
            Some(DataType::Bool) => typed!(bool, Bool),
            Some(DataType::Uint8) => typed!(u8, Uint8),
            Some(DataType::Uint16) => typed!(u16, Uint16),
            Some(DataType::Uint32) => typed!(u32, Uint32),
            Some(DataType::Uint64) => typed!(u64, Uint64),
            Some(DataType::Int8) => typed!(i8, Int8),
            Some(DataType::Int16) => typed!(i16, Int16),
            Some(DataType::Int32) => typed!(i32, Int32),
            Some(DataType::Int64) => typed!(i64, Int64),
            Some(DataType::Fp16) => typed!(half::f16, Fp16),
            Some(DataType::Fp32) => typed!(f32, Fp32),
            Some(DataType::Fp64) => typed!(f64, Fp64),
            Some(DataType::Bytes) => typed!(String, Bytes),
            None => {
                let (out, dims) = self.elements::<Scalar>(capacity, max_elements)?;
                (Values::Generic(out), dims)
            }
        };
        Some(ParsedData {
            values,
            dims,
            error: None,
        })
    }

    fn elements<T: Elem>(
        &mut self,
        capacity: usize,
        max_elements: usize,
    ) -> Option<(Vec<T>, Vec<usize>)> {
        self.ws();
        if self.peek()? != b'[' {
            // A bare scalar: the general parser says what is wrong with it.
            return None;
        }
        let mut grid = Grid {
            out: Vec::with_capacity(capacity),
            dims: Vec::new(),
            leaf_depth: None,
            max_elements,
        };
        self.level(&mut grid, 0)?;
        let rank = grid.leaf_depth.unwrap_or(grid.dims.len());
        let dims = (0..rank)
            .map(|d| grid.dims.get(d).copied().flatten().unwrap_or(0))
            .collect();
        Some((grid.out, dims))
    }

    /// The array at `depth` (the cursor is on its `[`), into `grid`; `None` where the general
    /// parser would find the nesting ragged or an element wrong.
    fn level<T: Elem>(&mut self, grid: &mut Grid<T>, depth: usize) -> Option<()> {
        if depth >= MAX_DEPTH || grid.leaf_depth.is_some_and(|k| depth >= k) {
            return None;
        }
        self.i += 1;
        self.ws();
        let mut len = 0usize;
        if self.peek()? == b']' {
            self.i += 1;
        } else {
            let inner = depth + 1;
            loop {
                let closed = if self.peek()? == b'[' {
                    self.level(grid, inner)?;
                    len += 1;
                    self.separator()?
                } else {
                    if grid.leaf_depth != Some(inner) {
                        if grid.leaf_depth.is_some() || grid.dims.len() > inner {
                            return None;
                        }
                        grid.leaf_depth = Some(inner);
                    }
                    self.scalars(grid, &mut len)?
                };
                if closed {
                    break;
                }
            }
        }
        // As `NestState::array_done`.
        if grid.leaf_depth.is_some_and(|k| depth >= k) {
            return None;
        }
        if grid.dims.len() <= depth {
            grid.dims.resize(depth + 1, None);
        }
        match grid.dims[depth] {
            None => grid.dims[depth] = Some(len),
            Some(seen) if seen != len => return None,
            Some(_) => {}
        }
        Some(())
    }

    /// After an element: true past the `]` that closes its array, false past a `,`.
    fn separator(&mut self) -> Option<bool> {
        self.ws();
        let next = self.peek()?;
        self.i += 1;
        match next {
            b',' => {
                self.ws();
                Some(false)
            }
            b']' => Some(true),
            _ => None,
        }
    }

    /// The scalars of an array from the cursor on (at the leaf depth), into `grid`, with
    /// their separators: true past the `]` that closes the array, false where an array comes
    /// next instead (which [`Cursor::level`] refuses there). The position is kept in a local
    /// between elements, and short plain numbers are read in place: this loop is nearly all of
    /// the time a body with many numbers takes.
    #[inline(always)]
    fn scalars<T: Elem>(&mut self, grid: &mut Grid<T>, len: &mut usize) -> Option<bool> {
        let b = self.b;
        loop {
            if self.plain_run(grid, len) {
                return Some(true);
            }
            // What the run left: read byte by byte (the run has tried the short reading).
            if grid.out.len() >= grid.max_elements {
                return None;
            }
            let value = self.scalar::<T>(*b.get(self.i)?)?;
            let mut i = self.i;
            grid.out.push(value);
            *len += 1;
            // `1,2,3` and `1, 2, 3` without a call to skip whitespace.
            let mut next = *b.get(i)?;
            if next != b',' && next != b']' {
                self.i = i;
                self.ws();
                i = self.i;
                next = *b.get(i)?;
            }
            i += 1;
            match next {
                b',' => {
                    if *b.get(i)? <= b' ' {
                        self.i = i;
                        self.ws();
                        i = self.i;
                    }
                    self.i = i;
                    if b.get(i) == Some(&b'[') {
                        return Some(false);
                    }
                }
                b']' => {
                    self.i = i;
                    return Some(true);
                }
                _ => return None,
            }
        }
    }

    /// Reads the array's elements from the cursor on while each is a short plain number
    /// ([`short_number_at`]), optionally after one space, directly followed by `,` or `]`:
    /// true past the `]`, false with the cursor on the first element it leaves (whatever it is,
    /// even malformed) to [`Cursor::scalars`]. Why: read one after the other, each number's end
    /// is found from its digits and the next one starts there, a chain of dependent loads and
    /// word operations that took about 30 cycles a number however short. Here the separators
    /// are found eight bytes at a time ahead of the numbers, so each number starts where the
    /// separators say and is read independently of the one before; a number's own end only has
    /// to agree. Numbers of one or two digits, most of what feature vectors hold, are read
    /// from the length the separators give: a 64-row churn request reads in under half the
    /// time the digit-by-digit loop took (`decode_speed`).
    #[inline(always)]
    fn plain_run<T: Elem>(&mut self, grid: &mut Grid<T>, len: &mut usize) -> bool {
        let b = self.b;
        let mut start = self.i;
        let mut base = start;
        let Some(word) = word_at(b, base) else {
            return false;
        };
        let mut separators = separators(word);
        loop {
            while separators == 0 {
                base += 8;
                let Some(word) = word_at(b, base) else {
                    self.i = start;
                    return false;
                };
                separators = self::separators(word);
            }
            let end = base + (separators.trailing_zeros() / 8) as usize;
            separators &= separators - 1;
            // `, ` as Python's `json` writes it.
            let from = start + usize::from(b[start] == b' ');
            // One digit or two, the most common elements of all, without the word operations.
            let first = b[from].wrapping_sub(b'0');
            let number = match end - from {
                1 if first < 10 => Some((Num::U64(u64::from(first)), end)),
                2 if (1..10).contains(&first) && b[from + 1].is_ascii_digit() => {
                    let second = b[from + 1] - b'0';
                    Some((Num::U64(u64::from(first * 10 + second)), end))
                }
                _ => short_number_at(b, from),
            };
            let value = match number {
                Some((n, stop)) if stop == end && grid.out.len() < grid.max_elements => n.element(),
                _ => None,
            };
            let Some(value) = value else {
                self.i = start;
                return false;
            };
            grid.out.push(value);
            *len += 1;
            start = end + 1;
            if b[end] == b']' {
                self.i = start;
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::server::parse::tests::{LIMIT, Rng, churn_64, instances, parse, parse_limited};
    use crate::server::tensor::DataType;

    /// Bodies in many forms, then thousands of random edits of them: the scan and the general
    /// parser must give the same answer (or the same error) for every one.
    #[test]
    fn scan_and_general_parser_agree_on_mangled_bodies() {
        let seeds: Vec<String> = vec![
            r#"{"id":"a","inputs":[{"name":"X","shape":[2,3],"datatype":"FP32","data":[1,2.5,-3e2,0,-0,7]}],"outputs":[{"name":"Y"}]}"#.into(),
            r#"{"inputs":[{"data":[[1,2],[3,4]],"datatype":"INT64","name":"X","shape":[2,2],"parameters":{"a":[1,{"b":null}]}}],"parameters":{"binary_data_output":false}}"#.into(),
            r#"{"inputs":[{"name":"S","shape":[2],"datatype":"BYTES","data":["x","y"]},{"name":"B","shape":[1],"datatype":"BOOL","data":[true]}]}"#.into(),
            r#" { "inputs" : [ { "name" : "X" , "shape" : [ 1 , 2 ] , "datatype" : "FP64" , "data" : [ [ 1.5 , 2 ] ] } ] } "#.into(),
            r#"{"inputs":[{"name":"X","shape":[2,2,2],"datatype":"UINT8","data":[[[1,2],[3,4]],[[5,6],[7,8]]]}]}"#.into(),
            r#"{"inputs":[{"name":"X","shape":[0,3],"datatype":"FP16","data":[]}],"outputs":[{"name":"a","parameters":{}},{"name":"b"}]}"#.into(),
            r#"{"inputs":[{"name":"X","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}],"outputs":[{"name":"a","parameters":{"binary_data":true}}],"parameters":{"binary_data_output":false}}"#.into(),
            // Long runs of numbers in the forms the eight-byte reading takes, and beside them.
            r#"{"inputs":[{"name":"X","shape":[2,8],"datatype":"FP32","data":[[1,2.5,-3,0.25,17.99,1234567,12345678,0],[-0, 0.0, 12, 5, -7.5, 9, 1e2, 3]]}],"outputs":[{"name":"Y"}]}"#.into(),
            r#"{"inputs":[{"name":"X","shape":[12],"datatype":"INT8","data":[1,2,-3,100,127,-128,0,-0,5,6,7,8]}],"parameters":{"binary_data_output":false}}"#.into(),
        ];
        let alphabet: &[&str] = &[
            "[",
            "]",
            "{",
            "}",
            ",",
            ":",
            "\"",
            "\\",
            " ",
            "-",
            "0",
            "1",
            "9",
            ".",
            "e",
            "E",
            "+",
            "true",
            "null",
            "\"data\"",
            "\"shape\"",
            "\"name\"",
            "\"datatype\"",
            "\"id\"",
            "\"inputs\"",
            "\"outputs\"",
            "\"parameters\"",
            "\"binary_data_size\"",
            "\"FP32\"",
            "\"INT8\"",
            "1e400",
            "[[1]]",
            "\u{e9}",
            "\u{1}",
            "\t",
            "\"binary_data\"",
            "\"binary_data_output\"",
            "false",
        ];
        let mut rng = Rng(3);
        for seed in &seeds {
            // The binary one has its data missing: an error, the same both ways.
            assert_eq!(parse(seed).is_ok(), !seed.contains("binary_data_size"));
        }
        for _ in 0..20_000 {
            let mut body = seeds[rng.below(seeds.len() as u64) as usize]
                .clone()
                .into_bytes();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(body.len() as u64 + 1) as usize;
                match rng.below(3) {
                    0 if at < body.len() => {
                        body.remove(at);
                    }
                    1 => {
                        let piece = alphabet[rng.below(alphabet.len() as u64) as usize];
                        body.splice(at..at, piece.bytes());
                    }
                    _ if at < body.len() => {
                        body[at] =
                            alphabet[rng.below(alphabet.len() as u64) as usize].as_bytes()[0];
                    }
                    _ => {}
                }
            }
            let _ = parse_limited(&body, 5);
            let _ = parse_limited(&body, LIMIT);
            let _ = instances(&body, DataType::Fp32, LIMIT);
        }
    }

    #[test]
    fn the_usual_bodies_take_the_scan() {
        for body in [
            churn_64(),
            br#"{"id":"r","inputs":[{"name":"X","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]],"parameters":{"content_type":"x"}}],"outputs":[{"name":"Y","parameters":{}}],"parameters":{"priority":1}}"#.to_vec(),
            // Sorted keys (Go maps, serde_json::Value): the data comes before its datatype.
            br#"{"inputs":[{"data":[1,2,3],"datatype":"INT64","name":"X","shape":[3]}]}"#.to_vec(),
            br#"{"inputs":[{"name":"S","shape":[2],"datatype":"BYTES","data":["a","b"]},{"name":"B","shape":[1],"datatype":"BOOL","data":[false]}]}"#.to_vec(),
            // As Python's `json.dumps` writes it.
            br#"{"inputs": [{"name": "X", "shape": [2, 3], "datatype": "FP32", "data": [[1, -2.5, 17.99], [0, 12, 1234567]]}]}"#.to_vec(),
        ] {
            assert!(
                super::request(&body, LIMIT).is_some(),
                "{}",
                String::from_utf8_lossy(&body)
            );
            parse_limited(&body, LIMIT).unwrap();
        }
        let body = br#"{"instances": [[1, 2], [3, 4]]}"#;
        assert!(super::instances(body, DataType::Fp32, LIMIT).is_some());
        // What the scan leaves to the general parser.
        for body in [
            &br#"{"inputs":[{"name":"X\u0041","shape":[1],"datatype":"FP32","data":[1]}]}"#[..],
            br#"{"inputs":[{"name":"X","shape":[1],"datatype":"FP32","data":[null]}]}"#,
            br#"{"inputs":[{"name":"X","name":"Y","shape":[1],"datatype":"FP32","data":[1]}]}"#,
            br#"{"inputs":[{"name":"X","shape":[2],"datatype":"FP32","data":[[1],[2,3]]}]}"#,
        ] {
            assert!(super::request(body, LIMIT).is_none());
        }
    }
}
