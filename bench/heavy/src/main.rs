//! Uses every dependency so that the whole graph is compiled and linked.

use clap::Parser;
use serde::{Deserialize, Serialize};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "a+b")]
    pattern: String,
}

#[derive(Serialize, Deserialize, Debug)]
struct Out {
    matched: bool,
    items: usize,
    compressed: usize,
}

fn main() {
    let args = Args::parse();
    let re = regex::Regex::new(&args.pattern).expect("regex");
    let file: syn::File = syn::parse_str("fn f() { let x = 1; }").expect("syn");
    let data = vec![7u8; 4096];
    let compressed = zstd::encode_all(&data[..], 3).expect("zstd");
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("tokio");
    let out = rt.block_on(async {
        Out {
            matched: re.is_match("aab"),
            items: file.items.len(),
            compressed: compressed.len(),
        }
    });
    println!("{}", serde_json::to_string(&out).expect("json"));
}
