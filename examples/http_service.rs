//! A small HTTP service around the embedded serving runtime: `POST /ask` with a PNG body and the question in the
//! query string (`?q=...`) or an `X-Question` header; the response streams the request's events as
//! newline-delimited JSON (chunked), one object per event:
//!
//! ```text
//! {"event":"token","id":17,"text":" red"}
//! {"event":"mask","size":128,"png_base64":"iVBORw0..."}
//! {"event":"depth","size":80,"values":[-0.41, ...]}
//! {"event":"done","text":"It is the red cube.","ids":[...],"seg":true,"depth_codes":[...],"timings_ms":{...}}
//! {"event":"error","message":"image: undecodable PNG: ..."}
//! ```
//!
//! Run it on a model directory (the initial model `perceptio demo` writes, or a training checkpoint):
//!
//! ```text
//! cargo run --release --example http_service -- runs/demo/model-init --addr 127.0.0.1:8080
//! curl -N --data-binary @scene.png 'http://127.0.0.1:8080/ask?q=where%20is%20the%20red%20cube%20?&max_new_tokens=160'
//! curl http://127.0.0.1:8080/health
//! ```
//!
//! `--dataflow FILE` serves another dataflow (with `serve-requests` and `serve-events` nodes) instead of the
//! shipped dataflows/serve.yaml; `--max-in-flight`, `--max-batch`, `--batch-window-ms`, `--reject` and `--device`
//! set the [`ServeConfig`]. A full server answers 503 with `--reject`, else the request waits for a slot. A client
//! that disconnects cancels its request.
//!
//! The HTTP/1.1 handling is hand-written on `std::net` with one thread per connection (tokio's `net` feature would
//! pull a crate that is not in Cargo.lock); the runtime itself runs on a small tokio runtime, and the model on
//! the graph's own threads.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use perceptio::serve::{Event, ImageInput, ServeConfig, ServeRuntime, SubmitError, SubmitOptions, WhenFull, mask_png};
use serde_json::json;

/// Serve a Perceptio model over HTTP.
#[derive(Parser, Debug)]
struct Args {
    /// The model directory.
    model: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Serve this dataflow instead of the shipped dataflows/serve.yaml (PERCEPTIO_MODEL is set to MODEL).
    #[arg(long)]
    dataflow: Option<PathBuf>,
    #[arg(long, default_value_t = 32)]
    max_in_flight: usize,
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    #[arg(long, default_value_t = 5)]
    batch_window_ms: u64,
    /// Answer 503 when full instead of waiting for a slot.
    #[arg(long)]
    reject: bool,
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Largest accepted request body.
const MAX_BODY: usize = 32 << 20;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = ServeConfig {
        max_in_flight: args.max_in_flight,
        max_batch: args.max_batch,
        batch_window_ms: args.batch_window_ms,
        when_full: if args.reject { WhenFull::Reject } else { WhenFull::Wait },
        device: args.device.clone(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let runtime = rt.block_on(async {
        match &args.dataflow {
            Some(file) => {
                // SAFETY: set before any other thread of this program reads the environment.
                unsafe { std::env::set_var("PERCEPTIO_MODEL", &args.model) };
                ServeRuntime::from_dataflow(&file.display().to_string(), config).await
            }
            None => ServeRuntime::new(&args.model, config).await,
        }
    })?;
    let runtime = Arc::new(runtime);
    let listener = TcpListener::bind(&args.addr).with_context(|| format!("listening on {}", args.addr))?;
    eprintln!("serving {} on http://{} (POST /ask)", args.model.display(), args.addr);
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let (runtime, handle) = (runtime.clone(), rt.handle().clone());
        std::thread::spawn(move || {
            if let Err(e) = handle_connection(stream, &runtime, &handle) {
                eprintln!("connection: {e:#}");
            }
        });
    }
    Ok(())
}

/// One parsed HTTP request.
struct Request {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> anyhow::Result<Request> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else { bail!("malformed request line") };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        if headers.len() > 100 {
            bail!("too many headers");
        }
    }
    let mut req = Request { method: method.to_string(), path: path.to_string(), query, headers, body: Vec::new() };
    let len: usize = req.header("content-length").map(str::parse).transpose()?.unwrap_or(0);
    if len > MAX_BODY {
        bail!("body of {len} bytes is over the {MAX_BODY}-byte limit");
    }
    req.body = vec![0; len];
    reader.read_exact(&mut req.body)?;
    Ok(req)
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(a), Some(b)) => {
                    out.push(a * 16 + b);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Writes one chunk of a chunked response.
fn chunk(stream: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    write!(stream, "{:x}\r\n", data.len())?;
    stream.write_all(data)?;
    stream.write_all(b"\r\n")?;
    stream.flush()
}

fn handle_connection(stream: TcpStream, runtime: &ServeRuntime, rt: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let req = match read_request(&mut reader) {
        Ok(r) => r,
        Err(e) => return Ok(respond(&mut out, "400 Bad Request", &format!("{e}\n"))?),
    };
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/health") => Ok(respond(&mut out, "200 OK", &format!("ok, {} in flight\n", runtime.in_flight()))?),
        ("POST", "/ask") => ask(&req, &mut out, runtime, rt),
        _ => Ok(respond(&mut out, "404 Not Found", "POST /ask or GET /health\n")?),
    }
}

fn ask(req: &Request, out: &mut TcpStream, runtime: &ServeRuntime, rt: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let Some(question) = req.param("q").or_else(|| req.header("x-question")).map(str::to_string) else {
        return Ok(respond(out, "400 Bad Request", "give the question as ?q=... or an X-Question header\n")?);
    };
    let max_new_tokens = match req.param("max_new_tokens").map(str::parse::<usize>).transpose() {
        Ok(n) => n.unwrap_or(SubmitOptions::default().max_new_tokens),
        Err(e) => return Ok(respond(out, "400 Bad Request", &format!("max_new_tokens: {e}\n"))?),
    };
    let image = ImageInput::Png(req.body.clone());
    let mut handle = match rt.block_on(runtime.submit(image, question, SubmitOptions { max_new_tokens })) {
        Ok(h) => h,
        Err(e @ SubmitError::Busy { .. }) => return Ok(respond(out, "503 Service Unavailable", &format!("{e}\n"))?),
        Err(e) => return Ok(respond(out, "500 Internal Server Error", &format!("{e}\n"))?),
    };
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )?;
    // A write error means the client left: returning drops the handle, which cancels the request.
    while let Some(event) = handle.blocking_next() {
        let mut line = serde_json::to_vec(&event_json(&event))?;
        line.push(b'\n');
        chunk(out, &line)?;
    }
    chunk(out, b"")?;
    Ok(())
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn event_json(event: &Event) -> serde_json::Value {
    match event {
        Event::Token { text, id } => json!({ "event": "token", "id": id, "text": text }),
        Event::Mask { probs, size } => match mask_png(probs, *size) {
            Ok(png) => json!({ "event": "mask", "size": size, "png_base64": base64(&png) }),
            Err(e) => json!({ "event": "mask", "size": size, "error": e }),
        },
        Event::Depth { values, size } => json!({ "event": "depth", "size": size, "values": values }),
        Event::Done { answer, timings } => json!({
            "event": "done",
            "text": answer.text,
            "ids": answer.ids,
            "seg": answer.seg,
            "depth_codes": answer.depth_codes,
            "batch_size": answer.batch_size,
            "timings_ms": {
                "queue": ms(timings.queue),
                "generate": ms(timings.generate),
                "mask": ms(timings.mask),
                "depth": ms(timings.depth),
                "total": ms(timings.total),
            },
        }),
        Event::Error { message } => json!({ "event": "error", "message": message }),
    }
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        let n = group.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | (b as u32) << (16 - 8 * i));
        for k in 0..4 {
            if k <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_percent_decoding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe, 0x00, 0x10]), "//4AEA==");
        assert_eq!(percent_decode("where%20is+the%3F%zz%4"), "where is the?%zz%4");
    }
}
