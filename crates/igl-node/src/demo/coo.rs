//! The demo's document: a Certificate of Origin shaped after the UN/CEFACT Certificate of
//! Origin (CCL-based JSON: exchanged document, issuing authority, consignor and consignee,
//! the supply-chain consignment with its transport, and consignment items whose trade line
//! items carry HS codes and origin criteria).

use serde_json::{Value, json};

/// Goods a demo certificate may list: HS subheading, description, origin criterion under
/// the Singapore–Australia Free Trade Agreement, unit, unit quantity per line.
const GOODS: [(&str, &str, &str, &str, u64); 5] = [
    (
        "0201.30",
        "Bovine meat, boneless, fresh or chilled (grass-fed, vacuum packed)",
        "WO",
        "KGM",
        12_000,
    ),
    (
        "2204.21",
        "Wine of fresh grapes, Barossa Valley Shiraz, in containers of 2 l or less",
        "WO",
        "LTR",
        4_500,
    ),
    (
        "1901.10",
        "Infant formula put up for retail sale",
        "PSR",
        "KGM",
        3_200,
    ),
    (
        "0409.00",
        "Natural honey (Manuka, Tasmanian leatherwood)",
        "WO",
        "KGM",
        800,
    ),
    (
        "8474.20",
        "Crushing or grinding machines for earth, stone and ores",
        "CTH",
        "C62",
        2,
    ),
];

/// The certificate number of the `n`-th demo certificate of run `run`.
pub fn certificate_number(run: &str, n: u64) -> String {
    format!("AU-COO-{run}-{:06}", n + 1)
}

/// Certificate of Origin number `number` (the `n`-th of the run), exported from Australia
/// to Singapore, as pretty-printed JSON bytes. Deterministic for the same arguments.
pub fn certificate_of_origin(number: &str, n: u64, issued: &str) -> Vec<u8> {
    let lines = 1 + (n % 3) as usize;
    let items: Vec<Value> = (0..lines)
        .map(|line| {
            let (hs, description, criterion, unit, quantity) = GOODS[(n as usize + line) % GOODS.len()];
            let quantity = quantity + (n % 97) * 10;
            json!({
                "sequenceNumber": line + 1,
                "tradeLineItems": [{
                    "sequenceNumber": 1,
                    "invoiceReference": {"id": format!("INV-{number}-{}", line + 1), "formattedIssueDateTime": issued},
                    "tradeProduct": {
                        "harmonisedTariffCode": {"classCode": hs, "className": description},
                        "description": description,
                        "originCountry": {"code": "AU", "name": "Australia"},
                    },
                    "transportPackages": [{"id": format!("SSCC-0093{:010}{}", n * 10 + line as u64, line), "grossVolume": null}],
                }],
                "tradeLineItemQuantity": {"value": quantity, "unitCode": unit},
                "crossBorderRegulatoryProcedure": {
                    "originCriteriaText": criterion,
                    "originCriteriaDescription": match criterion {
                        "WO" => "wholly obtained or produced entirely in the territory of Australia",
                        "PSR" => "satisfies the product-specific rule of Annex 2 (regional value content 40%)",
                        _ => "change in tariff heading from non-originating materials",
                    },
                },
                "manufacturer": {
                    "id": "abn:41 824 753 556",
                    "name": "Southern Cross Produce Pty Ltd",
                    "postalAddress": {"line1": "17 Dock Road", "cityName": "Geelong", "postcode": "3220", "countrySubDivisionName": "Victoria", "countryCode": "AU"},
                },
            })
        })
        .collect();
    let certificate = json!({
        "@context": "https://service.unece.org/trade/uncefact/vocabulary/uncefact/",
        "type": "CertificateOfOrigin",
        "exchangedDocument": {
            "id": number,
            "name": "Certificate of Origin",
            "typeCode": "861",
            "issueDateTime": issued,
            "issueLocation": {"id": "AUMEL", "name": "Melbourne"},
            "firstSignatoryAuthentication": {
                "signatory": "Dana Whitfield, Certification Officer",
                "actualDateTime": issued,
                "statement": "The undersigned certifies that the goods described above meet the origin requirements of the Agreement.",
            },
            "issuer": {
                "id": "abn:85 008 391 795",
                "name": "Australian Chamber of Commerce and Industry",
                "role": "issuing authority",
                "postalAddress": {"line1": "Commerce House, 24 Brisbane Avenue", "cityName": "Barton", "postcode": "2600", "countrySubDivisionName": "ACT", "countryCode": "AU"},
            },
        },
        "isPreferential": true,
        "freeTradeAgreement": "Singapore-Australia Free Trade Agreement (SAFTA)",
        "exporter": {
            "id": "abn:41 824 753 556",
            "name": "Southern Cross Produce Pty Ltd",
            "postalAddress": {"line1": "17 Dock Road", "cityName": "Geelong", "postcode": "3220", "countrySubDivisionName": "Victoria", "countryCode": "AU"},
        },
        "importer": {
            "id": "uen:201912345K",
            "name": "Lion City Fine Foods Pte Ltd",
            "postalAddress": {"line1": "8 Jurong Port Road", "cityName": "Singapore", "postcode": "619094", "countryCode": "SG"},
        },
        "supplyChainConsignment": {
            "id": format!("CONS-{number}"),
            "exportCountry": {"code": "AU", "name": "Australia"},
            "importCountry": {"code": "SG", "name": "Singapore"},
            "consignor": {"name": "Southern Cross Produce Pty Ltd", "countryCode": "AU"},
            "consignee": {"name": "Lion City Fine Foods Pte Ltd", "countryCode": "SG"},
            "loadingBaseportLocation": {"id": "AUMEL", "name": "Port of Melbourne"},
            "unloadingBaseportLocation": {"id": "SGSIN", "name": "Port of Singapore"},
            "mainCarriageTransportMovement": {
                "modeCode": "1",
                "modeName": "maritime transport",
                "id": format!("VOY-{}", 2600 + n % 400),
                "usedTransportMeans": {"name": "MV Southern Meridian", "id": "IMO 9876543"},
                "departureEvent": {"scheduledOccurrenceDateTime": issued},
            },
            "includedConsignmentItems": items,
        },
    });
    let mut bytes = serde_json::to_vec_pretty(&certificate).expect("a JSON value serialises");
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_deterministic_distinct_and_carry_hs_codes() {
        let one = certificate_of_origin("AU-COO-x-000001", 0, "2026-12-01T00:00:00Z");
        assert_eq!(
            one,
            certificate_of_origin("AU-COO-x-000001", 0, "2026-12-01T00:00:00Z")
        );
        let two = certificate_of_origin("AU-COO-x-000002", 1, "2026-12-01T00:00:00Z");
        assert_ne!(one, two);
        let value: Value = serde_json::from_slice(&two).unwrap();
        let items = value["supplyChainConsignment"]["includedConsignmentItems"]
            .as_array()
            .unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[0]["tradeLineItems"][0]["tradeProduct"]["harmonisedTariffCode"]["classCode"],
            "2204.21"
        );
        assert_eq!(
            items[0]["crossBorderRegulatoryProcedure"]["originCriteriaText"],
            "WO"
        );
        assert_eq!(
            value["exchangedDocument"]["issuer"]["role"],
            "issuing authority"
        );
    }
}
