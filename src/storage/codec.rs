//! Versioned record encoding: one format-version byte followed by the record's body, JSON unless
//! the record overrides [`Record::encode_body`] and [`Record::decode_body`].
//!
//! JSON keeps records readable in a hex dump and lets later versions add fields with
//! `#[serde(default)]` without a migration; the version byte is there for changes that cannot be
//! expressed that way. Records rewritten on every result batch have compact binary bodies
//! (built from [`super::bytes`]) and keep decoding their older JSON versions.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Result, StorageError};

/// A type stored with a format version.
pub trait Record: Serialize + DeserializeOwned {
    /// The format version written by this build; older versions must keep decoding.
    const FORMAT_VERSION: u8;

    /// Appends the body of the current format version to `out`; JSON unless overridden.
    fn encode_body(&self, out: &mut Vec<u8>) -> Result<()> {
        serde_json::to_writer(out, self).map_err(StorageError::Encode)
    }

    /// Decodes a body written with format `version`. The default reads the JSON of
    /// [`Self::FORMAT_VERSION`]; records that changed format read each older version too.
    fn decode_body(version: u8, body: &[u8]) -> Result<Self, BodyError> {
        if version != Self::FORMAT_VERSION {
            return Err(BodyError::UnknownVersion);
        }
        serde_json::from_slice(body).map_err(BodyError::Json)
    }
}

/// Why a body could not be decoded; [`decode`] adds the key.
#[derive(Debug)]
pub enum BodyError {
    /// A JSON body did not parse.
    Json(serde_json::Error),
    /// A binary body is malformed: what was wrong.
    Malformed(String),
    /// This build does not know the version.
    UnknownVersion,
}

/// Encodes `record` with its format version.
pub fn encode<T: Record>(record: &T) -> Result<Vec<u8>> {
    let mut bytes = vec![T::FORMAT_VERSION];
    record.encode_body(&mut bytes)?;
    Ok(bytes)
}

/// Decodes a record read from `key`, checking its format version.
pub fn decode<T: Record>(key: &[u8], bytes: &[u8]) -> Result<T> {
    let key = || String::from_utf8_lossy(key).into_owned();
    let (found, result) = match bytes.split_first() {
        Some((&version, body)) => (version, T::decode_body(version, body)),
        None => (0, Err(BodyError::UnknownVersion)),
    };
    result.map_err(|e| match e {
        BodyError::Json(source) => StorageError::Decode { key: key(), source },
        BodyError::Malformed(why) => StorageError::Corrupt { key: key(), why },
        BodyError::UnknownVersion => StorageError::UnknownFormat {
            key: key(),
            found,
            known: T::FORMAT_VERSION,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        a: u32,
        #[serde(default)]
        b: String,
    }

    impl Record for Sample {
        const FORMAT_VERSION: u8 = 1;
    }

    #[test]
    fn round_trips_and_rejects_unknown_versions() {
        let sample = Sample {
            a: 7,
            b: "x".into(),
        };
        let bytes = encode(&sample).expect("encodes");
        assert_eq!(bytes[0], 1);
        assert_eq!(decode::<Sample>(b"k", &bytes).expect("decodes"), sample);

        let mut future = bytes.clone();
        future[0] = 9;
        let err = decode::<Sample>(b"k", &future).expect_err("unknown version");
        assert!(err.to_string().contains("format version 9"), "{err}");
        assert!(decode::<Sample>(b"k", &[]).is_err());
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Floats(Vec<f64>);

    impl Record for Floats {
        const FORMAT_VERSION: u8 = 1;
    }

    #[test]
    fn floats_round_trip_bit_for_bit() {
        // Statistics are persisted as JSON; every f64 must come back identical (serde_json's
        // float_roundtrip feature), or restarts would perturb posteriors.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut values = vec![0.1 + 0.2, 1.0 - f64::EPSILON, 5e-324, f64::MAX, -0.0];
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = f64::from_bits(x);
            if v.is_finite() {
                values.push(v);
            }
        }
        let bytes = encode(&Floats(values.clone())).expect("encodes");
        let back = decode::<Floats>(b"k", &bytes).expect("decodes").0;
        for (a, b) in values.iter().zip(&back) {
            assert_eq!(a.to_bits(), b.to_bits(), "{a:e} came back as {b:e}");
        }
    }

    #[test]
    fn missing_fields_take_defaults() {
        let old = b"\x01{\"a\":3}";
        let decoded = decode::<Sample>(b"k", old).expect("decodes");
        assert_eq!(
            decoded,
            Sample {
                a: 3,
                b: String::new()
            }
        );
    }
}
