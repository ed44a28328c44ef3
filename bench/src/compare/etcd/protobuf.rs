//! The few protobuf wire-format pieces the etcd messages need: varint and
//! length-delimited fields out, a field iterator in. Field numbers and
//! message shapes are the etcd codec's business, not this module's.
//! Decoding borrows from the input; nothing here touches a socket or a
//! clock.

use anyhow::{bail, Result};

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A varint field (int64 values are cast: negatives take 10 bytes).
pub(crate) fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_varint(out, u64::from(field) << 3);
    put_varint(out, v);
}

/// A length-delimited field (bytes, string or embedded message).
pub(crate) fn put_bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_varint(out, u64::from(field) << 3 | 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A message holding one embedded message in `field`.
pub(crate) fn message(field: u32, inner: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    put_bytes_field(&mut m, field, inner);
    m
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    Varint(u64),
    Len(&'a [u8]),
    Fixed64,
    Fixed32,
}

/// Iterates over the fields of a message.
pub(crate) struct Fields<'a> {
    buf: &'a [u8],
    at: usize,
    failed: bool,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            at: 0,
            failed: false,
        }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.at) else {
                bail!("protobuf message ends inside a varint");
            };
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        bail!("protobuf varint longer than 10 bytes")
    }

    fn skip(&mut self, n: usize) -> Result<&'a [u8]> {
        let Some(s) = self.buf.get(self.at..self.at.saturating_add(n)) else {
            bail!("protobuf field of {n} bytes runs past its message");
        };
        self.at += n;
        Ok(s)
    }

    fn field(&mut self) -> Result<(u32, Value<'a>)> {
        let key = self.varint()?;
        let field = u32::try_from(key >> 3)
            .map_err(|_| anyhow::anyhow!("protobuf field number {}", key >> 3))?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.skip(8)?;
                Value::Fixed64
            }
            2 => {
                let len = usize::try_from(self.varint()?)?;
                Value::Len(self.skip(len)?)
            }
            5 => {
                self.skip(4)?;
                Value::Fixed32
            }
            wt => bail!("protobuf wire type {wt} (field {field}) is not supported"),
        };
        Ok((field, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>)>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.at >= self.buf.len() {
            return None;
        }
        let r = self.field();
        self.failed = r.is_err();
        Some(r)
    }
}
