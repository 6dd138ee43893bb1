//! Mainnet-shaped payloads for the large answers: deterministic, so every run and every
//! proxy sees the same bytes (the compare mock serves them; benches/parse.rs scans them).

/// A deterministic stream of pseudo-random words.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// `0x` and `n` random bytes in hex.
    fn hex(&mut self, n: usize) -> String {
        let mut s = String::with_capacity(2 + 2 * n);
        s.push_str("0x");
        while s.len() < 2 + 2 * n {
            s.push_str(&format!("{:016x}", self.next()));
        }
        s.truncate(2 + 2 * n);
        s
    }
    /// A quantity below `max`, as JSON-RPC writes it (no leading zeros).
    fn qty(&mut self, max: u64) -> String {
        format!("0x{:x}", self.next() % max.max(1))
    }
}

const NUMBER: &str = "0x1500000";

fn header_fields(r: &mut Rng, transactions: &str, withdrawals: &str) -> String {
    format!(
        concat!(
            "{{\"baseFeePerGas\":\"0x2d7c3b1f2\",\"blobGasUsed\":\"0x60000\",\"difficulty\":\"0x0\",",
            "\"excessBlobGas\":\"0x4b0000\",\"extraData\":\"0x6265617665726275696c642e6f7267\",",
            "\"gasLimit\":\"0x1c9c380\",\"gasUsed\":\"0x1298d6e\",\"hash\":\"{}\",",
            "\"logsBloom\":\"{}\",\"miner\":\"{}\",\"mixHash\":\"{}\",\"nonce\":\"0x0000000000000000\",",
            "\"number\":\"{}\",\"parentBeaconBlockRoot\":\"{}\",\"parentHash\":\"{}\",",
            "\"receiptsRoot\":\"{}\",\"requestsHash\":\"{}\",\"sha3Uncles\":\"{}\",\"size\":\"0x2f1a4\",",
            "\"stateRoot\":\"{}\",\"timestamp\":\"0x6756a1f3\",\"totalDifficulty\":\"0xc70d815d562d3cfa955\",",
            "\"transactions\":[{}],\"transactionsRoot\":\"{}\",\"uncles\":[],\"withdrawals\":[{}],",
            "\"withdrawalsRoot\":\"{}\"}}"
        ),
        r.hex(32),
        r.hex(256),
        r.hex(20),
        r.hex(32),
        NUMBER,
        r.hex(32),
        r.hex(32),
        r.hex(32),
        r.hex(32),
        r.hex(32),
        r.hex(32),
        transactions,
        r.hex(32),
        withdrawals,
        r.hex(32),
    )
}

fn withdrawals(r: &mut Rng) -> String {
    (0..16)
        .map(|i| {
            format!(
                "{{\"address\":\"{}\",\"amount\":\"{}\",\"index\":\"0x{:x}\",\"validatorIndex\":\"{}\"}}",
                r.hex(20),
                r.qty(0x1_0000_0000),
                0x4a0_0000 + i,
                r.qty(1_500_000)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A header with 200 transaction hashes and 16 withdrawals (~17 KB).
pub fn header() -> String {
    let mut r = Rng(0x5eed_0001);
    let txs: Vec<String> = (0..200).map(|_| format!("\"{}\"", r.hex(32))).collect();
    let w = withdrawals(&mut r);
    header_fields(&mut r, &txs.join(","), &w)
}

fn transaction(r: &mut Rng, block_hash: &str, i: usize) -> String {
    // An EIP-1559 call with ABI-encoded input of a few words, as most are.
    let words = 1 + (r.next() % 8) as usize;
    let input = r.hex(4 + 32 * words);
    format!(
        concat!(
            "{{\"accessList\":[],\"blockHash\":\"{}\",\"blockNumber\":\"{}\",\"chainId\":\"0x1\",",
            "\"from\":\"{}\",\"gas\":\"{}\",\"gasPrice\":\"{}\",\"hash\":\"{}\",\"input\":\"{}\",",
            "\"maxFeePerGas\":\"{}\",\"maxPriorityFeePerGas\":\"{}\",\"nonce\":\"{}\",\"r\":\"{}\",",
            "\"s\":\"{}\",\"to\":\"{}\",\"transactionIndex\":\"0x{:x}\",\"type\":\"0x2\",",
            "\"v\":\"0x1\",\"value\":\"{}\",\"yParity\":\"0x1\"}}"
        ),
        block_hash,
        NUMBER,
        r.hex(20),
        r.qty(0x80000),
        r.qty(0x10_0000_0000),
        r.hex(32),
        input,
        r.qty(0x10_0000_0000),
        r.qty(0x1_0000_0000),
        r.qty(0x10000),
        r.hex(32),
        r.hex(32),
        r.hex(20),
        i,
        r.qty(u64::MAX >> 4),
    )
}

/// The same kind of block with 200 full transactions (~150 KB).
pub fn full_block() -> String {
    let mut r = Rng(0x5eed_0002);
    let block_hash = r.hex(32);
    let txs: Vec<String> = (0..200)
        .map(|i| transaction(&mut r, &block_hash, i))
        .collect();
    let w = withdrawals(&mut r);
    header_fields(&mut r, &txs.join(","), &w)
}

fn log(r: &mut Rng, block_hash: &str, tx_hash: &str, tx: usize, index: usize) -> String {
    let topics: Vec<String> = (0..3).map(|_| format!("\"{}\"", r.hex(32))).collect();
    format!(
        concat!(
            "{{\"address\":\"{}\",\"blockHash\":\"{}\",\"blockNumber\":\"{}\",",
            "\"blockTimestamp\":\"0x6756a1f3\",\"data\":\"{}\",\"logIndex\":\"0x{:x}\",",
            "\"removed\":false,\"topics\":[{}],\"transactionHash\":\"{}\",",
            "\"transactionIndex\":\"0x{:x}\"}}"
        ),
        r.hex(20),
        block_hash,
        NUMBER,
        r.hex(32),
        index,
        topics.join(","),
        tx_hash,
        tx,
    )
}

/// 200 receipts with 3 logs each (~500 KB).
pub fn receipts() -> String {
    let mut r = Rng(0x5eed_0003);
    let block_hash = r.hex(32);
    let mut index = 0;
    let receipts: Vec<String> = (0..200)
        .map(|i| {
            let tx_hash = r.hex(32);
            let logs: Vec<String> = (0..3)
                .map(|_| {
                    index += 1;
                    log(&mut r, &block_hash, &tx_hash, i, index - 1)
                })
                .collect();
            format!(
                concat!(
                    "{{\"blobGasPrice\":\"0x1\",\"blockHash\":\"{}\",\"blockNumber\":\"{}\",",
                    "\"contractAddress\":null,\"cumulativeGasUsed\":\"{}\",\"effectiveGasPrice\":\"{}\",",
                    "\"from\":\"{}\",\"gasUsed\":\"{}\",\"logs\":[{}],\"logsBloom\":\"{}\",",
                    "\"status\":\"0x1\",\"to\":\"{}\",\"transactionHash\":\"{}\",",
                    "\"transactionIndex\":\"0x{:x}\",\"type\":\"0x2\"}}"
                ),
                block_hash,
                NUMBER,
                r.qty(0x1c9c380),
                r.qty(0x10_0000_0000),
                r.hex(20),
                r.qty(0x80000),
                logs.join(","),
                r.hex(256),
                r.hex(20),
                tx_hash,
                i,
            )
        })
        .collect();
    format!("[{}]", receipts.join(","))
}

/// 1 900 logs (~1 MB), as a wide eth_getLogs answers.
pub fn logs() -> String {
    let mut r = Rng(0x5eed_0004);
    let block_hash = r.hex(32);
    let logs: Vec<String> = (0..1900)
        .map(|i| {
            let tx_hash = r.hex(32);
            log(&mut r, &block_hash, &tx_hash, i / 10, i)
        })
        .collect();
    format!("[{}]", logs.join(","))
}
