//! The `ObjectAcl` contract.

use igl_core::Storage;
use igl_domain::{Jurisdiction, Multihash};

/// Grants are idempotent, per object and per reader.
pub async fn grants_are_per_object_and_reader(storage: &dyn Storage) {
    let document = Multihash::of(b"certificate of origin");
    let other = Multihash::of(b"invoice");
    let sg = Jurisdiction::parse("SG").unwrap();
    let au = Jurisdiction::parse("AU").unwrap();
    assert!(!storage.may_read(&document, sg).await.unwrap());
    let mut unit = storage.begin().await.unwrap();
    unit.grant_object(&document, sg).await.unwrap();
    unit.grant_object(&document, sg).await.unwrap();
    unit.grant_object(&document, au).await.unwrap();
    unit.commit().await.unwrap();
    assert!(storage.may_read(&document, sg).await.unwrap());
    assert!(!storage.may_read(&other, sg).await.unwrap());
    assert_eq!(storage.readers(&document).await.unwrap(), vec![au, sg]);
    assert!(storage.readers(&other).await.unwrap().is_empty());
}
