//! The Redis codec (RESP2): a single-instance lock with a random value,
//! the pattern Redis documents for one node (`SET NX PX` plus
//! compare-and-delete in a script).
//!
//! Per operation, on key `lock:<resource>` with value `<holder>` (decimal):
//! - start: `SCRIPT LOAD` of the compare-and-delete and the
//!   compare-and-pexpire scripts; ready once both SHA1s came back.
//! - Acquire: `SET lock:<r> <holder> NX PX <ttl_ms>`: `+OK` → `Granted`
//!   (token 0: Redis has no fencing token; aux = holder), nil → `Busy`.
//! - Release: `EVALSHA <del> 1 lock:<r> <holder>`: 1 → `Done`, 0 → `Stale`.
//! - Renew: `EVALSHA <pexpire> 1 lock:<r> <holder> <ttl_ms>`: 1 → `Done`,
//!   0 → `Stale`.
//! - Check: `GET lock:<r>`: equal to holder → `Done`, else `Stale`.
//!
//! Redis answers in order on a connection, so the codec keeps a FIFO of
//! what each outstanding reply is for. It never touches a socket or a
//! clock; error replies (`-ERR ...`) are `Err`s naming the reply.

use std::collections::VecDeque;
use std::io::Write as _;

use anyhow::{bail, Result};

use super::codec::{Codec, CodecConfig, Held, Op, Outcome};

/// Deletes `KEYS[1]` only if its value is `ARGV[1]`.
pub(crate) const DEL_SCRIPT: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
/// Sets `KEYS[1]` to expire in `ARGV[2]` ms only if its value is `ARGV[1]`.
pub(crate) const PEXPIRE_SCRIPT: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";

/// Nesting limit of RESP arrays we accept (we expect none).
const DEPTH_MAX: usize = 4;
/// Largest bulk string or array we accept; our replies are tiny.
const BULK_LEN_MAX: i64 = 1 << 20;

/// What an outstanding reply answers.
#[derive(Clone, Copy, Debug)]
enum Pending {
    LoadDel,
    LoadPexpire,
    Acquire { id: u64, holder: u64 },
    Release { id: u64 },
    Renew { id: u64 },
    Check { id: u64, holder: u64 },
}

/// One connection's RESP2 lock client.
pub(crate) struct RedisCodec {
    ttl_ms: u32,
    del_sha: Option<String>,
    pexpire_sha: Option<String>,
    pending: VecDeque<Pending>,
}

impl RedisCodec {
    pub(crate) fn new(cfg: &CodecConfig) -> Self {
        assert!(cfg.ttl_ms > 0, "ttl must be positive");
        Self {
            ttl_ms: cfg.ttl_ms,
            del_sha: None,
            pexpire_sha: None,
            pending: VecDeque::new(),
        }
    }
}

/// One RESP2 reply, borrowing from the input.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Int(i64),
    Bulk(Option<&'a [u8]>),
    Array(Option<Vec<Reply<'a>>>),
}

impl Reply<'_> {
    fn describe(&self) -> String {
        match self {
            Reply::Simple(s) => format!("+{}", String::from_utf8_lossy(s)),
            Reply::Error(s) => format!("-{}", String::from_utf8_lossy(s)),
            Reply::Int(n) => format!(":{n}"),
            Reply::Bulk(None) => "nil bulk".to_string(),
            Reply::Bulk(Some(b)) => format!("bulk {:?}", String::from_utf8_lossy(b)),
            Reply::Array(None) => "nil array".to_string(),
            Reply::Array(Some(a)) => format!("array of {}", a.len()),
        }
    }
}

/// Finds the CRLF-terminated line at `input[at..]`; returns it and the
/// offset after the CRLF, or `None` if incomplete.
fn line(input: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = input.get(at..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], at + end + 2))
}

fn parse_int(text: &[u8]) -> Result<i64> {
    let s = std::str::from_utf8(text)?;
    match s.parse::<i64>() {
        Ok(n) => Ok(n),
        Err(e) => bail!("redis sent a bad integer {s:?}: {e}"),
    }
}

/// Parses one reply at `input[at..]`: `Ok(None)` if incomplete, else the
/// reply and the offset after it.
pub(crate) fn parse_reply(
    input: &[u8],
    at: usize,
    depth: usize,
) -> Result<Option<(Reply<'_>, usize)>> {
    if depth > DEPTH_MAX {
        bail!("redis reply nests arrays deeper than {DEPTH_MAX}");
    }
    let Some(&kind) = input.get(at) else {
        return Ok(None);
    };
    let Some((text, next)) = line(input, at + 1) else {
        return Ok(None);
    };
    Ok(Some(match kind {
        b'+' => (Reply::Simple(text), next),
        b'-' => (Reply::Error(text), next),
        b':' => (Reply::Int(parse_int(text)?), next),
        b'$' => {
            let len = parse_int(text)?;
            if len == -1 {
                return Ok(Some((Reply::Bulk(None), next)));
            }
            if !(0..=BULK_LEN_MAX).contains(&len) {
                bail!("redis sent a bulk string of length {len}");
            }
            let len = len as usize; // checked in range above
            if input.len() < next + len + 2 {
                return Ok(None);
            }
            if &input[next + len..next + len + 2] != b"\r\n" {
                bail!("redis bulk string of length {len} is not followed by CRLF");
            }
            (Reply::Bulk(Some(&input[next..next + len])), next + len + 2)
        }
        b'*' => {
            let len = parse_int(text)?;
            if len == -1 {
                return Ok(Some((Reply::Array(None), next)));
            }
            if !(0..=BULK_LEN_MAX).contains(&len) {
                bail!("redis sent an array of length {len}");
            }
            let mut items = Vec::new();
            let mut at = next;
            for _ in 0..len {
                match parse_reply(input, at, depth + 1)? {
                    Some((item, after)) => {
                        items.push(item);
                        at = after;
                    }
                    None => return Ok(None),
                }
            }
            (Reply::Array(Some(items)), at)
        }
        other => bail!("redis sent a reply starting with byte {other:#04x}, not RESP2"),
    }))
}

/// Appends a RESP2 array of bulk strings.
fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    write!(out, "*{}\r\n", args.len()).expect("writing to a Vec cannot fail");
    for arg in args {
        write!(out, "${}\r\n", arg.len()).expect("writing to a Vec cannot fail");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

fn key(resource: u64) -> String {
    format!("lock:{resource}")
}

fn sha_of(reply: &Reply<'_>, what: &str) -> Result<String> {
    match reply {
        Reply::Bulk(Some(sha)) if sha.len() == 40 && sha.iter().all(u8::is_ascii_hexdigit) => {
            Ok(String::from_utf8_lossy(sha).into_owned())
        }
        other => bail!(
            "redis answered SCRIPT LOAD of the {what} script with {}",
            other.describe()
        ),
    }
}

/// Maps a script's integer result to Done (1) or Stale (0).
fn done_or_stale(reply: &Reply<'_>, what: &str) -> Result<Outcome> {
    match reply {
        Reply::Int(1) => Ok(Outcome::Done),
        Reply::Int(0) => Ok(Outcome::Stale),
        other => bail!("redis answered {what} with {}", other.describe()),
    }
}

impl Codec for RedisCodec {
    fn start(&mut self, out: &mut Vec<u8>) -> Result<()> {
        assert!(self.pending.is_empty(), "start is called once, first");
        command(out, &[b"SCRIPT", b"LOAD", DEL_SCRIPT.as_bytes()]);
        command(out, &[b"SCRIPT", b"LOAD", PEXPIRE_SCRIPT.as_bytes()]);
        self.pending.push_back(Pending::LoadDel);
        self.pending.push_back(Pending::LoadPexpire);
        Ok(())
    }

    fn ready(&self) -> bool {
        self.del_sha.is_some() && self.pexpire_sha.is_some()
    }

    fn encode(&mut self, id: u64, op: &Op, out: &mut Vec<u8>) -> Result<()> {
        let (Some(del), Some(pexpire)) = (&self.del_sha, &self.pexpire_sha) else {
            bail!("redis codec: operation encoded before the scripts were loaded");
        };
        let ttl = self.ttl_ms.to_string();
        match *op {
            Op::Acquire { resource, holder } => {
                assert!(holder != 0, "holder ids are never 0");
                let value = holder.to_string();
                command(
                    out,
                    &[
                        b"SET",
                        key(resource).as_bytes(),
                        value.as_bytes(),
                        b"NX",
                        b"PX",
                        ttl.as_bytes(),
                    ],
                );
                self.pending.push_back(Pending::Acquire { id, holder });
            }
            Op::Release { resource, held } => {
                let value = held.aux.to_string();
                command(
                    out,
                    &[
                        b"EVALSHA",
                        del.as_bytes(),
                        b"1",
                        key(resource).as_bytes(),
                        value.as_bytes(),
                    ],
                );
                self.pending.push_back(Pending::Release { id });
            }
            Op::Renew { resource, held } => {
                let value = held.aux.to_string();
                command(
                    out,
                    &[
                        b"EVALSHA",
                        pexpire.as_bytes(),
                        b"1",
                        key(resource).as_bytes(),
                        value.as_bytes(),
                        ttl.as_bytes(),
                    ],
                );
                self.pending.push_back(Pending::Renew { id });
            }
            Op::Check { resource, held } => {
                command(out, &[b"GET", key(resource).as_bytes()]);
                self.pending.push_back(Pending::Check {
                    id,
                    holder: held.aux,
                });
            }
        }
        Ok(())
    }

    fn decode(
        &mut self,
        input: &[u8],
        replies: &mut Vec<(u64, Outcome)>,
        _out: &mut Vec<u8>,
    ) -> Result<usize> {
        let mut at = 0;
        while let Some((reply, next)) = parse_reply(input, at, 0)? {
            let Some(pending) = self.pending.pop_front() else {
                bail!(
                    "redis sent a reply nothing was waiting for: {}",
                    reply.describe()
                );
            };
            if let Reply::Error(text) = reply {
                bail!(
                    "redis answered {pending:?} with an error: -{}",
                    String::from_utf8_lossy(text)
                );
            }
            match pending {
                Pending::LoadDel => self.del_sha = Some(sha_of(&reply, "compare-and-delete")?),
                Pending::LoadPexpire => {
                    self.pexpire_sha = Some(sha_of(&reply, "compare-and-pexpire")?)
                }
                Pending::Acquire { id, holder } => {
                    let outcome = match reply {
                        Reply::Simple(b"OK") => Outcome::Granted(Held {
                            token: 0,
                            aux: holder,
                        }),
                        Reply::Bulk(None) => Outcome::Busy,
                        other => bail!("redis answered SET NX with {}", other.describe()),
                    };
                    replies.push((id, outcome));
                }
                Pending::Release { id } => {
                    replies.push((id, done_or_stale(&reply, "compare-and-delete")?))
                }
                Pending::Renew { id } => {
                    replies.push((id, done_or_stale(&reply, "compare-and-pexpire")?))
                }
                Pending::Check { id, holder } => {
                    let outcome = match reply {
                        Reply::Bulk(Some(value)) if value == holder.to_string().as_bytes() => {
                            Outcome::Done
                        }
                        Reply::Bulk(_) => Outcome::Stale,
                        other => bail!("redis answered GET with {}", other.describe()),
                    };
                    replies.push((id, outcome));
                }
            }
            at = next;
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::peer_tests::decode_every_split;

    const SHA_A: &str = "0123456789abcdef0123456789abcdef01234567";
    const SHA_B: &str = "89abcdef0123456789abcdef0123456789abcdef";

    fn cfg() -> CodecConfig {
        CodecConfig {
            ttl_ms: 5000,
            tenant: "t".into(),
            echo_size: 0,
            secret: None,
        }
    }

    fn ready_codec() -> RedisCodec {
        let mut c = RedisCodec::new(&cfg());
        let mut out = Vec::new();
        c.start(&mut out).unwrap();
        assert!(!c.ready());
        let loads = format!(
            "${}\r\n{SHA_A}\r\n${}\r\n{SHA_B}\r\n",
            SHA_A.len(),
            SHA_B.len()
        );
        let mut replies = Vec::new();
        let used = c.decode(loads.as_bytes(), &mut replies, &mut out).unwrap();
        assert_eq!(used, loads.len());
        assert!(replies.is_empty());
        assert!(c.ready());
        c
    }

    #[test]
    fn start_loads_both_scripts() {
        let mut c = RedisCodec::new(&cfg());
        let mut out = Vec::new();
        c.start(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("*3\r\n$6\r\nSCRIPT\r\n$4\r\nLOAD\r\n"));
        assert_eq!(text.matches("SCRIPT").count(), 2);
        assert!(text.contains(DEL_SCRIPT) && text.contains(PEXPIRE_SCRIPT));
    }

    #[test]
    fn encodes_each_operation_as_resp_commands() {
        let mut c = ready_codec();
        let held = Held { token: 0, aux: 42 };
        let mut out = Vec::new();
        c.encode(
            1,
            &Op::Acquire {
                resource: 7,
                holder: 42,
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(out, b"*6\r\n$3\r\nSET\r\n$6\r\nlock:7\r\n$2\r\n42\r\n$2\r\nNX\r\n$2\r\nPX\r\n$4\r\n5000\r\n");
        out.clear();
        c.encode(2, &Op::Release { resource: 7, held }, &mut out)
            .unwrap();
        let want = format!(
            "*5\r\n$7\r\nEVALSHA\r\n$40\r\n{SHA_A}\r\n$1\r\n1\r\n$6\r\nlock:7\r\n$2\r\n42\r\n"
        );
        assert_eq!(out, want.as_bytes());
        out.clear();
        c.encode(3, &Op::Renew { resource: 7, held }, &mut out)
            .unwrap();
        let want =
            format!("*6\r\n$7\r\nEVALSHA\r\n$40\r\n{SHA_B}\r\n$1\r\n1\r\n$6\r\nlock:7\r\n$2\r\n42\r\n$4\r\n5000\r\n");
        assert_eq!(out, want.as_bytes());
        out.clear();
        c.encode(4, &Op::Check { resource: 7, held }, &mut out)
            .unwrap();
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$6\r\nlock:7\r\n");
    }

    #[test]
    fn encode_before_ready_is_an_error() {
        let mut c = RedisCodec::new(&cfg());
        let mut out = Vec::new();
        c.start(&mut out).unwrap();
        let err = c
            .encode(
                1,
                &Op::Acquire {
                    resource: 1,
                    holder: 1,
                },
                &mut out,
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("before the scripts were loaded"),
            "{err}"
        );
    }

    /// One reply of each kind, in order, whatever the fragmentation.
    #[test]
    fn decodes_replies_in_order_at_every_split() {
        let mut c = ready_codec();
        let held = Held { token: 0, aux: 42 };
        let ops = [
            Op::Acquire {
                resource: 7,
                holder: 42,
            },
            Op::Acquire {
                resource: 8,
                holder: 43,
            },
            Op::Check { resource: 7, held },
            Op::Check {
                resource: 7,
                held: Held { token: 0, aux: 9 },
            },
            Op::Check { resource: 9, held },
            Op::Renew { resource: 7, held },
            Op::Renew { resource: 7, held },
            Op::Release { resource: 7, held },
            Op::Release { resource: 7, held },
        ];
        let mut out = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            c.encode(10 + i as u64, op, &mut out).unwrap();
        }
        let stream = b"+OK\r\n$-1\r\n$2\r\n42\r\n$2\r\n42\r\n$-1\r\n:1\r\n:0\r\n:1\r\n:0\r\n";
        let want = vec![
            (10, Outcome::Granted(Held { token: 0, aux: 42 })),
            (11, Outcome::Busy),
            (12, Outcome::Done),
            (13, Outcome::Stale),
            (14, Outcome::Stale),
            (15, Outcome::Done),
            (16, Outcome::Stale),
            (17, Outcome::Done),
            (18, Outcome::Stale),
        ];
        let mut make = || {
            let mut fresh = ready_codec();
            let mut out = Vec::new();
            for (i, op) in ops.iter().enumerate() {
                fresh.encode(10 + i as u64, op, &mut out).unwrap();
            }
            fresh
        };
        decode_every_split(&mut make, stream, &want);
        // And the codec built above answers the same when fed at once.
        let mut replies = Vec::new();
        assert_eq!(
            c.decode(stream, &mut replies, &mut out).unwrap(),
            stream.len()
        );
        assert_eq!(replies, want);
    }

    #[test]
    fn partial_reply_is_left_unconsumed() {
        let mut c = ready_codec();
        let mut out = Vec::new();
        c.encode(
            1,
            &Op::Check {
                resource: 1,
                held: Held { token: 0, aux: 5 },
            },
            &mut out,
        )
        .unwrap();
        let mut replies = Vec::new();
        assert_eq!(c.decode(b"$1\r\n5", &mut replies, &mut out).unwrap(), 0);
        assert_eq!(c.decode(b"$1\r\n5\r", &mut replies, &mut out).unwrap(), 0);
        assert_eq!(c.decode(b"$1\r\n5\r\n", &mut replies, &mut out).unwrap(), 7);
        assert_eq!(replies, vec![(1, Outcome::Done)]);
    }

    #[test]
    fn error_reply_is_an_error_naming_it() {
        let mut c = ready_codec();
        let mut out = Vec::new();
        c.encode(
            1,
            &Op::Release {
                resource: 1,
                held: Held { token: 0, aux: 5 },
            },
            &mut out,
        )
        .unwrap();
        let err = c
            .decode(
                b"-NOSCRIPT No matching script\r\n",
                &mut Vec::new(),
                &mut out,
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("NOSCRIPT No matching script"),
            "{err}"
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut out = Vec::new();
        // Unsolicited reply.
        let mut c = ready_codec();
        assert!(c.decode(b"+OK\r\n", &mut Vec::new(), &mut out).is_err());
        // Not RESP.
        let mut c = ready_codec();
        c.encode(
            1,
            &Op::Acquire {
                resource: 1,
                holder: 1,
            },
            &mut out,
        )
        .unwrap();
        assert!(c
            .decode(b"HTTP/1.1 400\r\n", &mut Vec::new(), &mut out)
            .is_err());
        // Wrong reply type for SET NX.
        let mut c = ready_codec();
        c.encode(
            1,
            &Op::Acquire {
                resource: 1,
                holder: 1,
            },
            &mut out,
        )
        .unwrap();
        assert!(c.decode(b":1\r\n", &mut Vec::new(), &mut out).is_err());
        // Bad bulk terminator and length.
        let mut c = ready_codec();
        c.encode(
            1,
            &Op::Check {
                resource: 1,
                held: Held::default(),
            },
            &mut out,
        )
        .unwrap();
        assert!(c
            .decode(b"$1\r\nab\r\n", &mut Vec::new(), &mut out)
            .is_err());
        let mut c = ready_codec();
        c.encode(
            1,
            &Op::Check {
                resource: 1,
                held: Held::default(),
            },
            &mut out,
        )
        .unwrap();
        assert!(c.decode(b"$-7\r\n", &mut Vec::new(), &mut out).is_err());
        // A SCRIPT LOAD answer that is not a SHA1.
        let mut c = RedisCodec::new(&cfg());
        c.start(&mut out).unwrap();
        assert!(c
            .decode(b"$3\r\nabc\r\n", &mut Vec::new(), &mut out)
            .is_err());
    }

    #[test]
    fn parses_nested_arrays_and_bounds_depth() {
        let (r, n) = parse_reply(b"*2\r\n:1\r\n*1\r\n$1\r\nx\r\n", 0, 0)
            .unwrap()
            .unwrap();
        assert_eq!(n, 19);
        assert_eq!(
            r,
            Reply::Array(Some(vec![
                Reply::Int(1),
                Reply::Array(Some(vec![Reply::Bulk(Some(b"x"))]))
            ]))
        );
        assert!(parse_reply(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", 0, 0).is_err());
    }
}
