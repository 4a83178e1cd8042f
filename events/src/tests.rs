//! Tests of the canonical encoding, keys, signatures and wire format v1.

use proptest::prelude::*;

use crate::codec::{decode_event, encode_event, DecodeError, MAX_EVENT_BYTES};
use crate::event::*;
use crate::golden::golden_events;
use crate::keys::{self, derive_signing_key, KeyError};
use crate::model::{JobType, ModelRegistered};
use crate::types::{Hash32, PublicKey, SignatureBytes};
use crate::wire::{
    event_from_signed, Entry, EntryError, ExportError, ExportLine, SignedEvent, VerifyError,
    MAX_SIGNED_BYTES,
};

struct Golden {
    encoding: &'static str,
    signature: &'static str,
    entry_hash: &'static str,
}

/// Pinned bytes of [`golden_events`]: canonical encoding, signature by
/// `derive_signing_key(7, "golden/author")`, and hash of the entry at seq 3 after prev 0x09…09.
const GOLDEN: [Golden; 9] = [
    Golden {
        encoding: "0000000007000000000000002a0000000000000001000000e90300000000000005000000000000006561727468120000000000000066696e616e63652e736574746c656d656e740200000000000000070000000000000066696e616e63650a00000000000000636f6d706c69616e6365050000003c00000000000000a025260000000000abababababababababababababababababababababababababababababababab",
        signature: "5413c585b50c9775555dc91d03f67322223ba7524aeb6d5fc74e4e63a0998b77890ea16212f59a5405458e1074f93c7a3c43b3669c62a45a5ef2638cc292460a",
        entry_hash: "d6ba9047a5642dc2872b3de62d2c8a8a94bb160d6dad3f31f058cb5595b16299",
    },
    Golden {
        encoding: "0200000009000000000000000300000000000000040000000f000000000000006d6172732e6770752d68656c696f6e11000000",
        signature: "29791a62ff7bd294364b17c17e582ce9b41dece7fc2dd3bab02cf5ee0652096cba860210b2fe6083d55338d98e89bfceab39242d7fa7b49495619ddfb4da9403",
        entry_hash: "0a2ce7a5e799e5b75999120dde2a9d7d711867217aca859c92e8c8cc6550881b",
    },
    Golden {
        encoding: "020000000c00000000000000040000000000000007000000e9030000000000000f000000000000006d6172732e6770752d68656c696f6e000000001111111111111111111111111111111111111111111111111111111111111111010500000000000000656d6265640100000008000000000000006c6c766d70697065121212121212121212121212121212121212121212121212121212121212121208000000000000000c0000000000000001d204000000000000",
        signature: "d50cce2fea77a654533dda496d8bac3ce245590b8da2f870ae1bfd3fdbb6ad72090659ef39125e3859168abb257f4a4947893d37b4dce0742531d6eb858f0d0c",
        entry_hash: "d14950aa44329c874d373326235ed9bd64d2c1f815857745eb4dc5a9dbdea6a0",
    },
    Golden {
        encoding: "0300000014000000000000000500000000000000080000000400000004000000000000006c756e61b80b000064000000000000000100000000000000222222222222222222222222222222222222222222222222222222222222222233333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333",
        signature: "1ea24620566bc24cf2d393a84545b62762b09a0b498e682a7641d3136676e78e0b06a1261cb6a3f055b49ada702a9eee9947be1f4378196b70ccd032b135a30e",
        entry_hash: "42a77a30025e1b3c22f391dfc318c6041627f9201fc18903f032dd0d2b21451e",
    },
    Golden {
        encoding: "04000000150000000000000006000000000000000a000000444444444444444444444444444444444444444444444444444444444444444455555555555555555555555555555555555555555555555555555555555555550800000016000000000000006e6f6e63652035207365656e20617420736571203132",
        signature: "c6097433d1dbff99ed60f0c208d9d9eb2b8b3861c50bcdb3174e673177615b32a142d6d34dee8a3cbe628b364b8daaa5716f8d0b445ab44e5fdc302e3c28d301",
        entry_hash: "0b5f5020e0fb48ba62138c9554d98b3e43e8fe7d8ea757eae1c9b82f74f03d88",
    },
    Golden {
        encoding: "030000001600000000000000070000000000000008000000160000000400000000000000686561740300000000000000312e30020000000c0000000000000001000000030000001000000078000000000000000100000000000000222222222222222222222222222222222222222222222222222222222222222233333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333",
        signature: "95b6676b39bb596159742f2e04d2844a4674e53fac88fa4e7b6d0d03fd36099b6e307bead8a1d8b5a99caf8f85a0cbebfe5790db3ca684507c62c98dac910407",
        entry_hash: "988f6d59f305abf95ff51090889cb0cb31a9073006d3843692c64dbabfccbbe2",
    },
    Golden {
        encoding: "030000001700000000000000080000000000000008000000190000000b0000000000000072656c656173652d626f74777777777777777777777777777777777777777777777777777777777777777782000000000000000000000000000000",
        signature: "14addd7933bab5550ebf3b1f377f7dfdfb0f38730c5fae359cede2fb2bfadeb88e548854ab316abb03d84909feccdf62262ed4266f4c4f802256779e574efa0b",
        entry_hash: "bc503800a91b11a3f1c1be28387eed4bfaecfc3d6aa8f85d92981bf3dc9b2056",
    },
    Golden {
        encoding: "0500000018000000000000000900000000000000120000000b0000000000000072656c656173652e74617206000000000000006465706c6f79001000000000000088888888888888888888888888888888888888888888888888888888888888889999999999999999999999999999999999999999999999999999999999999999",
        signature: "0cdf887d042ae40851ef5e741a2a2accb2b8ed87783b328f92fb9e67b271ec6ccc6f4f1cff18088119ad7c49f64da1225013056575be778ffa1d717420f67408",
        entry_hash: "d6237da3495a3c31f9cb91196f8fab6a3452e78248f9dcdbeb74846eb4479a13",
    },
    Golden {
        encoding: "0400000019000000000000000a000000000000001000000009000000000000006661627269632f61610300000000000000aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaabababababababababababababababababababababababababababababababab09000000000000006661627269632f62620500000000000000bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee",
        signature: "95fcc0c07232615c5d0f7f7565fe661d4b8257bf3d5473dc9fec4efdfe50d425fc7260c26da707752cf45645bef74b194ad16c8cc194585f399c0ff13696b00d",
        entry_hash: "ae7d4a265bfbf9a3a4f5a6a111b0959f87116b505693fdc26ffb093c2a0ee6ee",
    },
];

const GOLDEN_AUTHOR: &str = "d612ff149abf42d5c6c1e9ae3f5cb77f83be819e773277a8e4905c7963f900d5";

const GOLDEN_EXPORT_LINE: &str = r#"{"seq":3,"hash":"d6ba9047a5642dc2872b3de62d2c8a8a94bb160d6dad3f31f058cb5595b16299","prev":"0909090909090909090909090909090909090909090909090909090909090909","author":"d612ff149abf42d5c6c1e9ae3f5cb77f83be819e773277a8e4905c7963f900d5","signature":"5413c585b50c9775555dc91d03f67322223ba7524aeb6d5fc74e4e63a0998b77890ea16212f59a5405458e1074f93c7a3c43b3669c62a45a5ef2638cc292460a","kind":"job_submitted","body":{"role":"client","tick":7,"nonce":42,"kind":"job_submitted","data":{"job":1001,"shard":"earth","workload":"finance.settlement","skills":["finance","compliance"],"duration_ticks":5,"deadline_tick":60,"budget_micros":2500000,"input_hash":"abababababababababababababababababababababababababababababababab"}},"entry":"AwAAAAAAAAAJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCdYS/xSav0LVxsHprj9ct3+DvoGedzJ3qOSQXHlj+QDVVBPFhbUMl3VVXckdA/ZzIiI7p1JK621fx05OY6CZi3eJDqFiEvWaVAVFjhB0+Tx6PEOzZpxipFpe8mOMwpJGCkZBQlJJQ3YxAAAAAAcAAAAAAAAAKgAAAAAAAAABAAAA6QMAAAAAAAAFAAAAAAAAAGVhcnRoEgAAAAAAAABmaW5hbmNlLnNldHRsZW1lbnQCAAAAAAAAAAcAAAAAAAAAZmluYW5jZQoAAAAAAAAAY29tcGxpYW5jZQUAAAA8AAAAAAAAAKAlJgAAAAAAq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s="}"#;

fn golden_key() -> crate::SigningKey {
    derive_signing_key(7, "golden/author")
}

#[test]
fn golden_encodings_are_stable() {
    for (event, golden) in golden_events().iter().zip(GOLDEN.iter()) {
        let bytes = encode_event(event).expect("golden events are small");
        assert_eq!(
            hex::encode(&bytes),
            golden.encoding,
            "encoding of {:?}",
            event.kind()
        );
        assert_eq!(&decode_event(&bytes).expect("golden bytes decode"), event);
    }
}

#[test]
fn golden_signatures_and_entry_hashes_are_stable() {
    let key = golden_key();
    assert_eq!(
        hex::encode(key.to_bytes()),
        "a06062d7b30344ca41863ac044ecd0896293d7d69f7fa57e83e18f7480907aa6"
    );
    assert_eq!(
        PublicKey::from(&key.verifying_key()).to_hex(),
        GOLDEN_AUTHOR
    );
    for (event, golden) in golden_events().into_iter().zip(GOLDEN.iter()) {
        let signed = SignedEvent::sign(&event, &key).expect("golden events are small");
        assert_eq!(signed.signature.to_hex(), golden.signature);
        assert!(signed.signed.starts_with(b"FABRICv1"));
        assert_eq!(hex::encode(&signed.signed[8..]), golden.encoding);
        let entry = Entry::new(3, Hash32([9; 32]), signed);
        assert_eq!(entry.hash().to_hex(), golden.entry_hash);
    }
}

#[test]
fn golden_export_line_is_stable_and_verifies() {
    let event = golden_events().remove(0);
    let signed = SignedEvent::sign(&event, &golden_key()).expect("small");
    let entry = Entry::new(3, Hash32([9; 32]), signed);
    let line = entry.export_line().expect("decodes");
    assert_eq!(line, GOLDEN_EXPORT_LINE);
    let parsed = ExportLine::parse(&line).expect("parses");
    assert_eq!(parsed.verify().expect("verifies"), entry);
}

#[test]
fn kind_tags_are_positional_and_named() {
    let names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "node_registered",
            "job_submitted",
            "job_assigned",
            "job_spilled",
            "heartbeat",
            "node_health_changed",
            "job_requeued",
            "job_receipt",
            "owner_command",
            "checkpoint",
            "rejected",
            "shard_registered",
            "fabric_genesis",
            "attestation_mismatch",
            "refusals_counted",
            "sequencer_takeover",
            "federation_receipt",
            "federation_fork",
            "artifact_recorded",
        ]
    );
    for (index, kind) in Kind::ALL.iter().enumerate() {
        assert_eq!(kind.tag(), index as u32);
    }
    // The tag sits right after the 20-byte header (role u32, tick u64, nonce u64).
    for event in golden_events() {
        let bytes = encode_event(&event).expect("small");
        let tag = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
        assert_eq!(tag, event.kind().tag());
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = encode_event(&golden_events()[1]).expect("small");
    let used = bytes.len();
    bytes.push(0);
    assert_eq!(
        decode_event(&bytes),
        Err(DecodeError::TrailingBytes { used, trailing: 1 })
    );
}

#[test]
fn truncated_and_garbage_input_is_refused() {
    let bytes = encode_event(&golden_events()[0]).expect("small");
    for cut in 0..bytes.len() {
        assert!(
            matches!(decode_event(&bytes[..cut]), Err(DecodeError::Malformed(_))),
            "a prefix of {cut} bytes decoded"
        );
    }
    // An unknown kind tag.
    let mut unknown = bytes.clone();
    unknown[20..24].copy_from_slice(&999u32.to_le_bytes());
    assert!(matches!(
        decode_event(&unknown),
        Err(DecodeError::Malformed(_))
    ));
    // A boolean that is neither 0 nor 1 (NodeHealthChanged.healthy).
    let health = Event::new(
        Role::Router,
        1,
        1,
        NodeHealthChanged {
            node: "n".to_owned(),
            healthy: true,
            last_heartbeat_tick: 0,
        },
    );
    let mut bad_bool = encode_event(&health).expect("small");
    let bool_at = 24 + 8 + 1;
    assert_eq!(bad_bool[bool_at], 1);
    bad_bool[bool_at] = 2;
    assert!(matches!(
        decode_event(&bad_bool),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn oversize_events_are_refused_both_ways() {
    let huge = Event::new(
        Role::Owner,
        0,
        0,
        OwnerCommand {
            action: OwnerAction::Governance {
                payload: vec![0; MAX_EVENT_BYTES],
            },
            expiry_tick: 1,
            approvals: vec![],
        },
    );
    let err = encode_event(&huge).expect_err("over the limit");
    assert!(err.len > err.max);
    assert!(SignedEvent::sign(&huge, &golden_key()).is_err());
    let bytes = vec![0u8; MAX_EVENT_BYTES + 1];
    assert!(matches!(
        decode_event(&bytes),
        Err(DecodeError::Oversize { .. })
    ));
    // A length prefix that claims more than the limit is refused before allocating.
    let mut claims_huge = encode_event(&golden_events()[1]).expect("small");
    claims_huge[24..32].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(decode_event(&claims_huge).is_err());
    let signed = vec![0u8; MAX_SIGNED_BYTES + 1];
    assert!(matches!(
        event_from_signed(&signed),
        Err(DecodeError::Oversize { .. })
    ));
}

#[test]
fn signed_bytes_need_the_magic() {
    let signed = SignedEvent::sign(&golden_events()[1], &golden_key()).expect("small");
    let mut wrong = signed.signed.clone();
    wrong[7] = b'2';
    assert_eq!(event_from_signed(&wrong), Err(DecodeError::BadMagic));
    assert_eq!(
        event_from_signed(&signed.signed[8..]),
        Err(DecodeError::BadMagic)
    );
}

#[test]
fn tampered_bytes_or_signatures_do_not_verify() {
    let key = golden_key();
    let signed = SignedEvent::sign(&golden_events()[0], &key).expect("small");
    assert_eq!(signed.verify(), Ok(()));
    for index in 0..signed.signed.len() {
        let mut tampered = signed.clone();
        tampered.signed[index] ^= 0x01;
        assert_eq!(
            tampered.verify(),
            Err(VerifyError::BadSignature(signed.author)),
            "flipping signed byte {index} went unnoticed"
        );
    }
    for index in 0..64 {
        let mut tampered = signed.clone();
        tampered.signature.0[index] ^= 0x80;
        assert!(
            tampered.verify().is_err(),
            "flipping signature byte {index} went unnoticed"
        );
    }
    let mut other_author = signed.clone();
    other_author.author = PublicKey::from(&derive_signing_key(7, "someone else").verifying_key());
    assert!(other_author.verify().is_err());
}

#[test]
fn weak_and_invalid_keys_are_refused() {
    let signed = SignedEvent::sign(&golden_events()[1], &golden_key()).expect("small");
    // The identity point (y = 1) has small order: anyone can forge for it.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = SignedEvent {
        author: PublicKey(identity),
        ..signed.clone()
    };
    assert_eq!(
        weak.verify(),
        Err(VerifyError::WeakKey(PublicKey(identity)))
    );
    // y = 2 is not on the curve.
    let mut off_curve = [0u8; 32];
    off_curve[0] = 2;
    let invalid = SignedEvent {
        author: PublicKey(off_curve),
        ..signed
    };
    assert_eq!(
        invalid.verify(),
        Err(VerifyError::InvalidKey(PublicKey(off_curve)))
    );
}

#[test]
fn entries_round_trip_and_refuse_bad_sizes() {
    let signed = SignedEvent::sign(&golden_events()[2], &golden_key()).expect("small");
    let entry = Entry::new(77, Hash32([5; 32]), signed);
    let bytes = entry.encode();
    assert_eq!(bytes.len(), entry.encoded_len());
    assert_eq!(&bytes[..8], &77u64.to_le_bytes());
    assert_eq!(&bytes[8..40], &[5; 32]);
    assert_eq!(&bytes[136..144], b"FABRICv1");
    assert_eq!(Entry::decode(&bytes), Ok(entry.clone()));
    assert_eq!(crate::entry_hash(&bytes), entry.hash());
    assert!(matches!(
        Entry::decode(&bytes[..143]),
        Err(EntryError::TooShort { .. })
    ));
    let too_long = vec![0u8; crate::MAX_ENTRY_BYTES + 1];
    assert!(matches!(
        Entry::decode(&too_long),
        Err(EntryError::TooLong { .. })
    ));
}

#[test]
fn export_lines_that_disagree_with_their_entry_are_refused() {
    let signed = SignedEvent::sign(&golden_events()[0], &golden_key()).expect("small");
    let entry = Entry::new(0, Hash32::default(), signed);
    let line = ExportLine::from_entry(&entry).expect("decodes");

    let mut wrong_seq = line.clone();
    wrong_seq.seq = 1;
    assert!(matches!(
        wrong_seq.verify(),
        Err(ExportError::Mismatch { field: "seq", .. })
    ));

    let mut wrong_body = line.clone();
    wrong_body.body.header.tick += 1;
    assert!(matches!(
        wrong_body.verify(),
        Err(ExportError::Mismatch { field: "body", .. })
    ));

    let mut wrong_hash = line.clone();
    wrong_hash.hash = Hash32([1; 32]);
    assert!(matches!(
        wrong_hash.verify(),
        Err(ExportError::Mismatch { field: "hash", .. })
    ));

    // A changed payload byte inside `entry`: its signature no longer verifies.
    let mut bytes = entry.encode();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let mut forged = line.clone();
    use base64::Engine;
    forged.entry = base64::engine::general_purpose::STANDARD.encode(&bytes);
    forged.hash = crate::entry_hash(&bytes);
    forged.body = Entry::decode(&bytes)
        .expect("sizes fine")
        .event()
        .expect("still decodes");
    assert!(matches!(
        forged.verify(),
        Err(ExportError::Signature { .. })
    ));

    assert!(matches!(
        ExportLine::parse("{\"seq\":1}"),
        Err(ExportError::Json(_))
    ));
}

#[test]
fn derived_keys_are_deterministic_and_distinct() {
    let a = derive_signing_key(1, "node/earth.core-alpha");
    assert_eq!(
        a.to_bytes(),
        derive_signing_key(1, "node/earth.core-alpha").to_bytes()
    );
    assert_ne!(
        a.to_bytes(),
        derive_signing_key(2, "node/earth.core-alpha").to_bytes()
    );
    assert_ne!(
        a.to_bytes(),
        derive_signing_key(1, "node/earth.edge-europa").to_bytes()
    );
}

#[test]
fn key_files_round_trip_with_private_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("owner.key");
    let key = keys::generate();
    keys::save_secret(&path, &key, false).expect("saves");
    let mode = std::fs::metadata(&path)
        .expect("exists")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        keys::load_secret(&path).expect("loads").to_bytes(),
        key.to_bytes()
    );
    let public = keys::load_public(&keys::public_path(&path)).expect("loads public");
    assert_eq!(public, key.verifying_key());

    let again = keys::save_secret(&path, &keys::generate(), false);
    assert!(matches!(again, Err(KeyError::Exists { .. })));
    assert_eq!(
        keys::load_secret(&path).expect("unchanged").to_bytes(),
        key.to_bytes()
    );
}

#[test]
fn readable_secret_files_are_refused_with_advice() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("open.key");
    keys::save_secret(&path, &keys::generate(), false).expect("saves");
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let err = keys::load_secret(&path).expect_err("too open");
        assert!(matches!(err, KeyError::TooOpen { .. }));
        let message = err.to_string();
        assert!(message.contains("chmod 600"), "{message}");
        assert!(message.contains(&format!("{mode:04o}")), "{message}");
    }
}

#[test]
fn malformed_key_files_name_what_is_wrong() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.key");
    let cases = [
        ("not json", "invalid JSON"),
        (
            r#"{"format":"other","secret_key":"00","public_key":"00"}"#,
            "format",
        ),
        (
            r#"{"format":"fabric-ed25519-secret-key-v1","secret_key":"zz","public_key":"00"}"#,
            "secret_key",
        ),
    ];
    for (contents, expected) in cases {
        std::fs::write(&path, contents).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = keys::load_secret(&path).expect_err("malformed");
        assert!(
            err.to_string().contains(expected),
            "{err} should mention {expected}"
        );
    }
    // A public key that does not belong to the secret key.
    let key = keys::generate();
    let other = keys::generate();
    let mismatched = format!(
        r#"{{"format":"fabric-ed25519-secret-key-v1","secret_key":"{}","public_key":"{}"}}"#,
        hex::encode(key.to_bytes()),
        hex::encode(other.verifying_key().to_bytes())
    );
    std::fs::write(&path, mismatched).expect("write");
    let err = keys::load_secret(&path).expect_err("mismatch");
    assert!(err.to_string().contains("does not belong"), "{err}");
}

#[test]
fn owner_approval_messages_bind_nonce_and_command() {
    let command = OwnerCommand {
        action: OwnerAction::PauseShard {
            shard: "mars".to_owned(),
        },
        expiry_tick: 50,
        approvals: vec![],
    };
    let message = command.approval_message(9);
    assert!(message.starts_with(b"FABRICv1-owner-approval"));
    assert_ne!(message, command.approval_message(10));
    let mut later = command.clone();
    later.expiry_tick = 51;
    assert_ne!(message, later.approval_message(9));
    // Approvals themselves are not part of what is approved.
    let mut approved = command.clone();
    approved.approvals.push(Approval {
        owner: PublicKey([1; 32]),
        signature: SignatureBytes([2; 64]),
    });
    assert_eq!(message, approved.approval_message(9));
}

/// A signature whose R carries a small-order component: valid under RFC 8032's cofactored
/// equation, invalid under the cofactorless one. Only a signer who knows the secret can make one.
fn torsion_signature(
    key: &crate::SigningKey,
    message: &[u8],
    torsion: curve25519_dalek::EdwardsPoint,
) -> [u8; 64] {
    use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
    use curve25519_dalek::Scalar;
    use sha2::{Digest, Sha512};
    let expanded = Sha512::digest(key.to_bytes());
    let mut secret_scalar: [u8; 32] = expanded[..32].try_into().expect("32 bytes");
    secret_scalar[0] &= 248;
    secret_scalar[31] &= 127;
    secret_scalar[31] |= 64;
    let a = Scalar::from_bytes_mod_order(secret_scalar);
    let r = Scalar::from_bytes_mod_order_wide(&Sha512::digest(message).into());
    let big_r = (r * ED25519_BASEPOINT_POINT + torsion).compress();
    let mut hasher = Sha512::new();
    hasher.update(big_r.as_bytes());
    hasher.update(key.verifying_key().as_bytes());
    hasher.update(message);
    let k = Scalar::from_bytes_mod_order_wide(&hasher.finalize().into());
    let s = r + k * a;
    let mut signature = [0u8; 64];
    signature[..32].copy_from_slice(big_r.as_bytes());
    signature[32..].copy_from_slice(s.as_bytes());
    signature
}

#[test]
fn single_and_batch_verification_agree_on_torsion_signatures() {
    use crate::ed25519::{verify, verify_batch, Item};
    use curve25519_dalek::constants::EIGHT_TORSION;
    use ed25519_dalek::Verifier;
    let key = golden_key();
    let public = key.verifying_key();
    let honest: Vec<(Vec<u8>, [u8; 64])> = (0u8..12)
        .map(|i| {
            let message = vec![i; 40];
            let signature = ed25519_dalek::Signer::sign(&key, &message).to_bytes();
            (message, signature)
        })
        .collect();
    // Order 2 (index 4) and order 8 (index 1) components.
    for torsion in [EIGHT_TORSION[4], EIGHT_TORSION[1]] {
        let message = b"crafted".to_vec();
        let crafted = torsion_signature(&key, &message, torsion);
        let cofactorless = public.verify(&message, &ed25519_dalek::Signature::from_bytes(&crafted));
        assert!(
            cofactorless.is_err(),
            "the crafted signature must exercise the difference"
        );
        let item = Item {
            key: &public,
            message: &message,
            signature: &crafted,
        };
        assert!(verify(&item), "cofactored single verification accepts it");
        // Whatever batch it lands in, and wherever, the batch gives the same answer.
        for position in 0..=honest.len() {
            for size in [position, honest.len()] {
                let mut items: Vec<Item<'_>> = honest[..size]
                    .iter()
                    .map(|(m, s)| Item {
                        key: &public,
                        message: m,
                        signature: s,
                    })
                    .collect();
                items.insert(position.min(items.len()), item);
                assert!(
                    verify_batch(&items),
                    "batch of {} with it at {position}",
                    items.len()
                );
            }
        }
        // A really bad signature is refused by both, in every batch.
        let mut bad = crafted;
        bad[40] ^= 1;
        let bad_item = Item {
            key: &public,
            message: &message,
            signature: &bad,
        };
        assert!(!verify(&bad_item));
        for position in 0..=honest.len() {
            let mut items: Vec<Item<'_>> = honest
                .iter()
                .map(|(m, s)| Item {
                    key: &public,
                    message: m,
                    signature: s,
                })
                .collect();
            items.insert(position, bad_item);
            assert!(!verify_batch(&items));
        }
    }
}

#[test]
fn non_canonical_s_is_refused() {
    use crate::ed25519::{verify, verify_batch, Item};
    let key = golden_key();
    let public = key.verifying_key();
    let message = b"m".to_vec();
    let mut signature = ed25519_dalek::Signer::sign(&key, &message).to_bytes();
    // S + L encodes the same scalar non-canonically.
    // L = 2^252 + 27742317777372353535851937790883648493, little-endian.
    let l: [u8; 32] =
        hex::decode("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010")
            .expect("hex")
            .try_into()
            .expect("32 bytes");
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = signature[32 + i] as u16 + l[i] as u16 + carry;
        signature[32 + i] = sum as u8;
        carry = sum >> 8;
    }
    let item = Item {
        key: &public,
        message: &message,
        signature: &signature,
    };
    assert!(!verify(&item));
    assert!(!verify_batch(&[item]));
}

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9.-]{0,23}"
}

fn hash() -> impl Strategy<Value = Hash32> {
    any::<[u8; 32]>().prop_map(Hash32)
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (
            any::<u64>(),
            name(),
            name(),
            prop::collection::vec(name(), 0..4),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            hash()
        )
            .prop_map(
                |(
                    job,
                    shard,
                    workload,
                    skills,
                    duration_ticks,
                    deadline_tick,
                    budget_micros,
                    input_hash,
                )| {
                    Body::from(JobSubmitted {
                        job,
                        shard,
                        workload,
                        skills,
                        duration_ticks,
                        deadline_tick,
                        budget_micros,
                        input_hash,
                    })
                }
            ),
        (any::<u64>(), name(), name()).prop_map(|(job, shard, node)| Body::from(JobAssigned {
            job,
            shard,
            node
        })),
        (
            any::<u64>(),
            name(),
            name(),
            prop_oneof![
                Just(SpillReason::QueueOverBudget),
                Just(SpillReason::NoEligibleNode),
                Just(SpillReason::ShardPaused)
            ]
        )
            .prop_map(
                |(job, from_shard, to_shard, reason)| Body::from(JobSpilled {
                    job,
                    from_shard,
                    to_shard,
                    reason
                })
            ),
        (name(), any::<u32>())
            .prop_map(|(node, running_jobs)| Body::from(Heartbeat { node, running_jobs })),
        (name(), any::<bool>(), any::<u64>()).prop_map(|(node, healthy, last_heartbeat_tick)| {
            Body::from(NodeHealthChanged {
                node,
                healthy,
                last_heartbeat_tick,
            })
        }),
        (
            any::<u64>(),
            name(),
            hash(),
            prop::option::of((name(), any::<u32>(), name())),
            any::<u64>(),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(
                |(job, node, output_hash, kernel, started_tick, finished_tick, ok)| Body::from(
                    JobReceipt {
                        job,
                        node,
                        outcome: if ok {
                            JobOutcome::Completed
                        } else {
                            JobOutcome::Failed
                        },
                        output_hash,
                        kernel: kernel.map(|(id, version, adapter)| KernelRef {
                            input_hash: Hash32(*blake3::hash(adapter.as_bytes()).as_bytes()),
                            id,
                            version,
                            adapter,
                        }),
                        started_tick,
                        finished_tick,
                        execution_us: (job % 3 != 0).then_some(job >> 8),
                    }
                )
            ),
        (prop::collection::vec(any::<u8>(), 0..64), any::<u64>()).prop_map(
            |(payload, expiry_tick)| Body::from(OwnerCommand {
                action: OwnerAction::Governance { payload },
                expiry_tick,
                approvals: vec![]
            })
        ),
        (
            name(),
            name(),
            0..JobType::ALL.len(),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(model_id, model_version, job_type, weights)| {
                Body::from(OwnerCommand {
                    action: OwnerAction::RegisterModel {
                        registration: ModelRegistered {
                            model_id,
                            model_version,
                            job_type: JobType::ALL[job_type],
                            weights,
                        },
                    },
                    expiry_tick: 9,
                    approvals: vec![],
                })
            }),
        (any::<u64>(), hash(), hash(), hash()).prop_map(
            |(tree_size, merkle_root, state_hash, snapshot_hash)| Body::from(Checkpoint {
                tree_size,
                merkle_root,
                state_hash,
                snapshot_hash
            })
        ),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    let role = prop_oneof![
        Just(Role::Client),
        Just(Role::Router),
        Just(Role::Node),
        Just(Role::Owner),
        Just(Role::Ledger)
    ];
    (role, any::<u64>(), any::<u64>(), body()).prop_map(|(role, tick, nonce, body)| Event {
        header: Header { role, tick, nonce },
        body,
    })
}

proptest! {
    #[test]
    fn encoding_round_trips_and_is_canonical(event in event()) {
        let bytes = encode_event(&event).expect("small events");
        let decoded = decode_event(&bytes).expect("own bytes decode");
        prop_assert_eq!(&decoded, &event);
        prop_assert_eq!(encode_event(&decoded).expect("small"), bytes);
    }

    #[test]
    fn json_bodies_round_trip(event in event()) {
        let json = serde_json::to_string(&event).expect("serialises");
        let back: Event = serde_json::from_str(&json).expect("parses");
        prop_assert_eq!(back, event);
    }

    #[test]
    fn random_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_event(&bytes);
        let _ = Entry::decode(&bytes);
    }
}

/// The bytes of a `refusals_counted` event, written out field by field as FORMAT.md describes
/// them: header, tag 14, the count of entries, then (reason tag u32, attempts u64) each.
#[test]
fn refusals_counted_encoding_is_pinned() {
    let event = Event::new(
        Role::Ledger,
        7,
        (7 << 24) | (1 << 23),
        RefusalsCounted {
            counts: vec![
                RefusalCount {
                    reason: RejectReason::BadSignature,
                    attempts: 3,
                },
                RefusalCount {
                    reason: RejectReason::UnknownKey,
                    attempts: 1_000,
                },
            ],
        },
    );
    let mut expected = Vec::new();
    expected.extend_from_slice(&4u32.to_le_bytes()); // role: ledger
    expected.extend_from_slice(&7u64.to_le_bytes()); // tick
    expected.extend_from_slice(&((7u64 << 24) | (1 << 23)).to_le_bytes()); // nonce
    expected.extend_from_slice(&14u32.to_le_bytes()); // kind tag: refusals_counted
    expected.extend_from_slice(&2u64.to_le_bytes()); // two counts
    expected.extend_from_slice(&0u32.to_le_bytes()); // bad_signature
    expected.extend_from_slice(&3u64.to_le_bytes());
    expected.extend_from_slice(&3u32.to_le_bytes()); // unknown_key
    expected.extend_from_slice(&1_000u64.to_le_bytes());
    let bytes = encode_event(&event).expect("small");
    assert_eq!(bytes, expected);
    assert_eq!(
        hex::encode(&bytes),
        "04000000070000000000000000008007000000000e000000020000000000000000000000\
         030000000000000003000000e803000000000000"
    );
    assert_eq!(decode_event(&bytes).expect("decodes"), event);
    assert_eq!(event.kind().as_str(), "refusals_counted");
}

/// The genesis's key origin is its last field: `u32` variant index, then a simulation's seed.
#[test]
fn genesis_key_origin_bytes_are_pinned() {
    let genesis = |key_origin| {
        Event::new(
            Role::Ledger,
            0,
            0,
            FabricGenesis {
                ledger_key: PublicKey([0x66; 32]),
                owners: vec![PublicKey([0x77; 32]), PublicKey([0x88; 32])],
                owner_threshold: 2,
                key_origin,
            },
        )
    };
    let fields = format!(
        "04000000{}{}0c000000{}0200000000000000{}{}02000000",
        "00".repeat(8),
        "00".repeat(8),
        "66".repeat(32),
        "77".repeat(32),
        "88".repeat(32)
    );
    for (origin, tail) in [
        (KeyOrigin::Operator, "00000000"),
        (
            KeyOrigin::Simulation { seed: 7 },
            "010000000700000000000000",
        ),
    ] {
        let event = genesis(origin);
        let bytes = encode_event(&event).expect("a genesis is small");
        assert_eq!(hex::encode(&bytes), format!("{fields}{tail}"));
        assert_eq!(decode_event(&bytes).expect("decodes"), event);
    }
    // An origin tag past the last variant is not an event.
    let mut unknown = hex::decode(format!("{fields}02000000")).expect("hex");
    assert!(decode_event(&unknown).is_err());
    unknown.truncate(unknown.len() - 4);
    assert!(
        decode_event(&unknown).is_err(),
        "a genesis without its origin"
    );
    assert_eq!(
        serde_json::to_value(KeyOrigin::Simulation { seed: 7 }).expect("json"),
        serde_json::json!({"origin": "simulation", "seed": 7})
    );
    assert_eq!(
        serde_json::to_value(KeyOrigin::Operator).expect("json"),
        serde_json::json!({"origin": "operator"})
    );
}
