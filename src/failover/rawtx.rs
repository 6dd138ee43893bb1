//! Raw transactions: the hash of an `eth_sendRawTransaction`'s transaction, and whether a
//! node's rejection says it already has that transaction.
//!
//! Both decide what a wallet is told after a retry or a broadcast: "already known" from a
//! second node means the first one took the transaction, so its hash is the answer. A wrong
//! hash, or a rejection mistaken for "already known", sends the wallet waiting for a
//! transaction that will never exist, so both are strict: anything unexpected is `None`/false.

use tiny_keccak::{Hasher, Keccak};

/// EIP-2718 type of a blob transaction (EIP-4844).
const BLOB_TX_TYPE: u8 = 0x03;

/// The transaction hash of a raw transaction as sent to `eth_sendRawTransaction` (`0x` and
/// hex). `None` when it is not hex or not a transaction detour can hash.
///
/// The hash is keccak-256 of the transaction's canonical encoding. That is the raw bytes
/// themselves, except for a blob transaction in its network form
/// (`0x03 || rlp([tx_payload_body, blobs, commitments, proofs])`), whose hash covers only
/// `0x03 || rlp(tx_payload_body)`: the blobs travel with it but are not part of it.
pub fn hash(raw_hex: &str) -> Option<[u8; 32]> {
    let hex_digits = raw_hex.strip_prefix("0x")?;
    let bytes = hex::decode(hex_digits).ok()?;
    let signed = canonical(&bytes)?;
    let mut k = Keccak::v256();
    match signed {
        Canonical::Whole => k.update(&bytes),
        Canonical::Blob(inner) => {
            k.update(&[BLOB_TX_TYPE]);
            k.update(inner);
        }
    }
    let mut out = [0u8; 32];
    k.finalize(&mut out);
    Some(out)
}

/// A hash as the JSON string a node answers (`"0x…"`, lowercase).
pub fn hash_json(hash: &[u8; 32]) -> String {
    format!("\"0x{}\"", hex::encode(hash))
}

/// What the hash covers.
enum Canonical<'a> {
    /// The raw bytes as they are.
    Whole,
    /// A blob transaction's inner RLP list (`rlp(tx_payload_body)`), prefixed by its type.
    Blob(&'a [u8]),
}

fn canonical(bytes: &[u8]) -> Option<Canonical<'_>> {
    let (&first, rest) = bytes.split_first()?;
    if first != BLOB_TX_TYPE {
        // A legacy transaction (an RLP list, first byte >= 0xc0) or another typed one
        // (type byte < 0x80, then its RLP payload): hashed as it is.
        return Some(Canonical::Whole);
    }
    // The outer list must span exactly the rest.
    let outer = Item::read(rest)?;
    if !outer.list || outer.end != rest.len() {
        return None;
    }
    let body = &rest[outer.header..];
    let first_item = Item::read(body)?;
    if first_item.list {
        // Network form: the first member is the signed transaction's own list.
        Some(Canonical::Blob(&body[..first_item.end]))
    } else {
        // Canonical form (the chain id first): hashed as it is.
        Some(Canonical::Whole)
    }
}

/// One RLP item's header: whether it is a list, the header's length, and where the item ends.
struct Item {
    list: bool,
    header: usize,
    end: usize,
}

impl Item {
    /// Reads the item at the start of `b`; `None` when the header is malformed or the item
    /// runs past the end of `b`.
    fn read(b: &[u8]) -> Option<Item> {
        let &p = b.first()?;
        let (list, header, len) = match p {
            0x00..=0x7f => (false, 0, 1),
            0x80..=0xb7 => (false, 1, usize::from(p - 0x80)),
            0xb8..=0xbf => Self::long(b, usize::from(p - 0xb7)).map(|(h, l)| (false, h, l))?,
            0xc0..=0xf7 => (true, 1, usize::from(p - 0xc0)),
            0xf8..=0xff => Self::long(b, usize::from(p - 0xf7)).map(|(h, l)| (true, h, l))?,
        };
        let end = header.checked_add(len)?;
        (end <= b.len()).then_some(Item { list, header, end })
    }

    /// A long header: `n` big-endian length bytes after the prefix.
    fn long(b: &[u8], n: usize) -> Option<(usize, usize)> {
        let digits = b.get(1..1 + n)?;
        if digits.first() == Some(&0) || n > std::mem::size_of::<usize>() {
            return None;
        }
        let len = digits
            .iter()
            .fold(0usize, |acc, &d| (acc << 8) | usize::from(d));
        Some((1 + n, len))
    }
}

/// Whether a node's rejection of a raw transaction says it already has it, in the exact
/// wordings clients use (case ignored):
///
/// | client | message |
/// |---|---|
/// | geth, erigon, reth | `already known` |
/// | nethermind | `AlreadyKnown`, `Transaction already known` |
/// | besu | `Known transaction` |
/// | older geth | `known transaction: 0x…` |
/// | openethereum | `Transaction with the same hash was already imported.` |
///
/// Anything else is not: "unknown transaction type", "transaction not known", "nonce too low"
/// and the like must reach the client as they are.
pub fn already_known(message: &str) -> bool {
    let m = message.trim().to_ascii_lowercase();
    let m = m.trim_end_matches('.');
    m == "already known"
        || m.starts_with("already known:")
        || m == "alreadyknown"
        || m == "transaction already known"
        || m == "known transaction"
        || m.starts_with("known transaction:")
        || m == "transaction with the same hash was already imported"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keccak(parts: &[&[u8]]) -> [u8; 32] {
        let mut k = Keccak::v256();
        for p in parts {
            k.update(p);
        }
        let mut out = [0u8; 32];
        k.finalize(&mut out);
        out
    }

    /// RLP of a byte string.
    fn string(s: &[u8]) -> Vec<u8> {
        if s.len() == 1 && s[0] < 0x80 {
            return s.to_vec();
        }
        let mut out = header(0x80, s.len());
        out.extend_from_slice(s);
        out
    }

    /// RLP of a list of already-encoded items.
    fn list(items: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = items.concat();
        let mut out = header(0xc0, body.len());
        out.extend(body);
        out
    }

    fn header(base: u8, len: usize) -> Vec<u8> {
        if len <= 55 {
            return vec![base + len as u8];
        }
        let digits: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|&d| d == 0)
            .collect();
        let mut out = vec![base + 55 + digits.len() as u8];
        out.extend(digits);
        out
    }

    #[test]
    fn legacy_and_typed_transactions_hash_as_sent() {
        // A legacy transaction (an RLP list) and an EIP-1559 one (type 2): the hash is over
        // the bytes as they are.
        let legacy = list(&[string(&[9]), string(&[0x04, 0xa8, 0x17, 0xc8, 0x00])]);
        assert_eq!(
            hash(&format!("0x{}", hex::encode(&legacy))),
            Some(keccak(&[&legacy]))
        );
        let mut typed = vec![0x02];
        typed.extend(list(&[string(&[1]), string(&[2])]));
        assert_eq!(
            hash(&format!("0x{}", hex::encode(&typed))),
            Some(keccak(&[&typed]))
        );
        // The known hash of a real mainnet legacy transfer (EIP-155 example).
        let eip155 = "0xf86c098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a76400008025a028ef61340bd939bc2195fe537567866003e1a15d3c71ff63e1590620aa636276a067cbe9d8997f761aecb703304b3800ccf555c9f3dc64214b297fb1966a3b6d83";
        assert_eq!(
            hex::encode(hash(eip155).unwrap()),
            "33469b22e9f636356c4160a87eb19df52b7412e8eac32a4a55ffe88ea8350788"
        );
    }

    #[test]
    fn a_blob_transaction_hashes_without_its_sidecar() {
        // tx_payload_body: chain id, nonce, …, a blob versioned hash list, signature.
        let body = list(&[
            string(&[1]),
            string(&[7]),
            string(&[0x3b, 0x9a, 0xca, 0x00]),
            list(&[string(&[0x01; 32])]),
            string(&[0x55; 32]),
        ]);
        let canonical = [&[BLOB_TX_TYPE][..], &body].concat();
        let want = keccak(&[&canonical]);
        // Canonical form: hashed as it is.
        assert_eq!(hash(&format!("0x{}", hex::encode(&canonical))), Some(want));
        // Network form: blobs (131072 bytes each, so long headers), commitments and proofs
        // wrap the body, and the hash is the same.
        let blob = vec![0xab; 131_072];
        let network = [
            &[BLOB_TX_TYPE][..],
            &list(&[
                body.clone(),
                list(&[string(&blob)]),
                list(&[string(&[0xcc; 48])]),
                list(&[string(&[0xdd; 48])]),
            ]),
        ]
        .concat();
        assert_eq!(hash(&format!("0x{}", hex::encode(&network))), Some(want));
        // Truncated or padded wrappers are not hashed.
        let cut = &network[..network.len() - 1];
        assert_eq!(hash(&format!("0x{}", hex::encode(cut))), None);
        let padded = [&network[..], &[0]].concat();
        assert_eq!(hash(&format!("0x{}", hex::encode(&padded))), None);
    }

    #[test]
    fn bad_hex_is_no_hash_and_never_a_panic() {
        for bad in [
            "0xaé0",
            "0xé",
            "0x",
            "0x0",
            "abcd",
            "0xzz",
            "0x03",
            "0x03c2",
            "0x03f9ffff",
        ] {
            assert_eq!(hash(bad), None, "{bad}");
        }
    }

    #[test]
    fn already_known_in_each_client_wording_and_nothing_else() {
        for yes in [
            "already known",
            "Already Known",
            "AlreadyKnown",
            "Transaction already known",
            "Known transaction",
            "known transaction: 0x5e2b4f1a",
            "Transaction with the same hash was already imported.",
        ] {
            assert!(already_known(yes), "{yes}");
        }
        for no in [
            "unknown transaction type",
            "unknown transaction",
            "transaction not known",
            "Unknown transaction: 0x12",
            "nonce too low",
            "transaction type not supported",
            "not already known",
            "already known fee cap too low",
            "",
        ] {
            assert!(!already_known(no), "{no}");
        }
    }
}
