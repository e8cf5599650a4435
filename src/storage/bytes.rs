//! Little-endian building blocks of the compact record encodings: LEB128 varints for counts
//! (DWARF 5, §7.6), raw IEEE 754 bits for floats (so every value, −0.0 included, comes back
//! bit for bit), and length-prefixed byte strings. Reading never panics: a value that ends early or
//! claims more bytes than remain is an error naming what was being read.

/// Appends encoded values to a buffer.
pub struct ByteWriter<'a>(pub &'a mut Vec<u8>);

impl ByteWriter<'_> {
    /// An unsigned LEB128 varint: 1 byte below 128, at most 10.
    pub fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.0.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    /// A length (as a varint).
    pub fn len(&mut self, len: usize) {
        self.varint(len as u64);
    }

    /// An f64 as its 8 little-endian bytes.
    pub fn f64(&mut self, value: f64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self, bytes: &[u8]) {
        self.len(bytes.len());
        self.0.extend_from_slice(bytes);
    }
}

/// Reads values written by [`ByteWriter`], in order.
pub struct ByteReader<'a> {
    rest: &'a [u8],
}

impl<'a> ByteReader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// An unsigned LEB128 varint.
    pub fn varint(&mut self, what: &str) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self
                .rest
                .split_first()
                .ok_or_else(|| format!("{what} ends early"))?;
            self.rest = rest;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(format!("{what} overflows 64 bits"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("{what} overflows 64 bits"))
    }

    /// A length of items that each take at least `min_item_bytes` of what remains: a corrupt
    /// length cannot make the caller reserve more memory than the value could hold.
    pub fn len(&mut self, what: &str, min_item_bytes: usize) -> Result<usize, String> {
        let len = self.varint(what)?;
        let fits = len
            .checked_mul(min_item_bytes.max(1) as u64)
            .is_some_and(|bytes| bytes <= self.rest.len() as u64);
        if fits {
            Ok(len as usize)
        } else {
            Err(format!(
                "{what} of {len} does not fit in the {} bytes left",
                self.rest.len()
            ))
        }
    }

    /// An f64 from its 8 little-endian bytes.
    pub fn f64(&mut self, what: &str) -> Result<f64, String> {
        let bytes = self.take(8, what)?;
        Ok(f64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self, what: &str) -> Result<&'a [u8], String> {
        let len = self.len(what, 1)?;
        self.take(len, what)
    }

    /// `len` raw bytes.
    pub fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], String> {
        if len > self.rest.len() {
            return Err(format!("{what} ends early"));
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }

    /// The bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Succeeds only if every byte was read.
    pub fn finish(&self) -> Result<(), String> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(format!("{} bytes left over", self.rest.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let mut buf = Vec::new();
        let mut w = ByteWriter(&mut buf);
        let ints = [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX];
        ints.iter().for_each(|&v| w.varint(v));
        let floats = [0.1 + 0.2, -0.0, 5e-324, f64::MAX, f64::MIN_POSITIVE];
        floats.iter().for_each(|&v| w.f64(v));
        w.bytes(b"sharpe");
        // 127 takes one byte, 128 two (LEB128).
        assert_eq!(&buf[..5], &[0, 1, 127, 0x80, 0x01]);
        let mut r = ByteReader::new(&buf);
        for &v in &ints {
            assert_eq!(r.varint("int").expect("int"), v);
        }
        for &v in &floats {
            assert_eq!(r.f64("float").expect("float").to_bits(), v.to_bits());
        }
        assert_eq!(r.bytes("name").expect("name"), b"sharpe");
        r.finish().expect("all read");
    }

    #[test]
    fn malformed_input_is_an_error_that_names_the_field() {
        let err = ByteReader::new(&[0x80]).varint("arm count").unwrap_err();
        assert_eq!(err, "arm count ends early");
        let eleven = [0xff; 11];
        assert!(ByteReader::new(&eleven)
            .varint("n")
            .unwrap_err()
            .contains("overflows"));
        // A length claiming more items than bytes remain.
        let err = ByteReader::new(&[200, 1, 2]).len("arms", 8).unwrap_err();
        assert!(err.contains("arms of 200 does not fit"), "{err}");
        assert!(ByteReader::new(&[1, 2, 3]).f64("mean").is_err());
        assert!(ByteReader::new(&[5, b'a']).bytes("name").is_err());
        assert_eq!(
            ByteReader::new(&[1]).finish().unwrap_err(),
            "1 bytes left over"
        );
    }
}
