use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// ISO 3166-1 alpha-2 officially assigned codes (249), sorted for binary search.
const ISO_3166_ALPHA2: [&str; 249] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

/// A jurisdiction: an officially assigned ISO 3166-1 alpha-2 code in upper case (`AU`, `SG`).
///
/// User-assigned codes (`XX`) and exceptional reservations (`EU`) are rejected, as in the
/// reference implementation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Jurisdiction([u8; 2]);

/// Why a string is not a [`Jurisdiction`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JurisdictionError {
    /// Not exactly two upper-case ASCII letters (`au`, `AUS`, `A1`).
    #[error("{0:?} is not a two-letter upper-case code")]
    Malformed(String),
    /// Well formed but not an assigned ISO 3166-1 alpha-2 code (`XX`, `EU`).
    #[error("{0:?} is not an ISO 3166-1 alpha-2 country code")]
    Unknown(String),
}

impl Jurisdiction {
    /// Parses an upper-case ISO 3166-1 alpha-2 code.
    pub fn parse(value: &str) -> Result<Self, JurisdictionError> {
        let bytes = value.as_bytes();
        if bytes.len() != 2 || !bytes.iter().all(u8::is_ascii_uppercase) {
            return Err(JurisdictionError::Malformed(value.to_owned()));
        }
        if ISO_3166_ALPHA2.binary_search(&value).is_err() {
            return Err(JurisdictionError::Unknown(value.to_owned()));
        }
        Ok(Self([bytes[0], bytes[1]]))
    }

    /// The two-letter code.
    pub fn as_str(&self) -> &str {
        // Only ASCII upper-case letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Display for Jurisdiction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Jurisdiction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Jurisdiction({})", self.as_str())
    }
}

impl FromStr for Jurisdiction {
    type Err = JurisdictionError;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse(value)
    }
}

impl TryFrom<String> for Jurisdiction {
    type Error = JurisdictionError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Jurisdiction> for String {
    fn from(value: Jurisdiction) -> Self {
        value.as_str().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_code_table_is_sorted_and_unique() {
        assert!(ISO_3166_ALPHA2.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn accepts_known_codes() {
        for code in ["AU", "SG", "GB", "CN", "US", "NZ"] {
            assert_eq!(Jurisdiction::parse(code).unwrap().as_str(), code);
        }
    }

    #[test]
    fn rejects_like_the_reference() {
        assert!(matches!(
            Jurisdiction::parse("au"),
            Err(JurisdictionError::Malformed(_))
        ));
        assert!(matches!(
            Jurisdiction::parse("AUS"),
            Err(JurisdictionError::Malformed(_))
        ));
        assert!(matches!(
            Jurisdiction::parse(""),
            Err(JurisdictionError::Malformed(_))
        ));
        assert!(matches!(
            Jurisdiction::parse("XX"),
            Err(JurisdictionError::Unknown(_))
        ));
        assert!(matches!(
            Jurisdiction::parse("EU"),
            Err(JurisdictionError::Unknown(_))
        ));
    }

    #[test]
    fn serde_round_trip_and_rejection() {
        let json = serde_json::to_string(&Jurisdiction::parse("SG").unwrap()).unwrap();
        assert_eq!(json, "\"SG\"");
        let back: Jurisdiction = serde_json::from_str(&json).unwrap();
        assert_eq!(back.as_str(), "SG");
        assert!(serde_json::from_str::<Jurisdiction>("\"sg\"").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(input in "\\PC{0,4}") {
            if let Ok(jurisdiction) = Jurisdiction::parse(&input) {
                prop_assert_eq!(jurisdiction.as_str(), input.as_str());
            }
        }

        #[test]
        fn every_table_code_parses(index in 0usize..ISO_3166_ALPHA2.len()) {
            prop_assert!(Jurisdiction::parse(ISO_3166_ALPHA2[index]).is_ok());
        }
    }
}
