//! Where an export's bytes live: a local file or block device (io_uring
//! through glommio), or an upstream NBD server the proxy forwards to.
//!
//! Backends only move bytes. They never decide whether a write may happen:
//! the gate did that before the call.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::io::{BufferedFile, OpenOptions};
use glommio::net::TcpStream;

/// Largest zero-fill buffer written at once for WRITE_ZEROES.
const ZERO_CHUNK: usize = 1 << 20;

/// An open backend for one connection.
#[derive(Debug)]
pub enum Backend {
    /// A local file or block device.
    File(FileBackend),
    /// An upstream NBD server.
    Nbd(NbdUpstream),
}

impl Backend {
    /// Size in bytes.
    #[must_use]
    pub fn size(&self) -> u64 {
        match self {
            Backend::File(f) => f.size,
            Backend::Nbd(n) => n.size,
        }
    }

    /// Whether TRIM / WRITE_ZEROES are supported.
    #[must_use]
    pub fn can_trim(&self) -> bool {
        match self {
            Backend::File(_) => true,
            Backend::Nbd(n) => n.flags & NBD_FLAG_SEND_TRIM != 0,
        }
    }

    /// Reads `len` bytes at `offset` (inside the size: the caller checked).
    pub async fn read(&mut self, offset: u64, len: u32) -> io::Result<Vec<u8>> {
        match self {
            Backend::File(f) => f.read(offset, len).await,
            Backend::Nbd(n) => n.read(offset, len).await,
        }
    }

    /// Writes `data` at `offset`; with `fua`, durably before returning.
    pub async fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        match self {
            Backend::File(f) => f.write(offset, data, fua).await,
            Backend::Nbd(n) => n.command(NBD_CMD_WRITE, fua_flag(fua), offset, data).await,
        }
    }

    /// Makes every acknowledged write durable.
    pub async fn flush(&mut self) -> io::Result<()> {
        match self {
            Backend::File(f) => f.flush().await,
            Backend::Nbd(n) => n.command(NBD_CMD_FLUSH, 0, 0, &[]).await,
        }
    }

    /// Discards a range (reads of it may return anything, here zeroes).
    pub async fn trim(&mut self, offset: u64, len: u32, fua: bool) -> io::Result<()> {
        match self {
            Backend::File(f) => f.zero(offset, len, true, fua).await,
            Backend::Nbd(n) => {
                n.command_len(NBD_CMD_TRIM, fua_flag(fua), offset, len)
                    .await
            }
        }
    }

    /// Writes zeroes to a range; `no_hole` keeps it allocated.
    pub async fn write_zeroes(
        &mut self,
        offset: u64,
        len: u32,
        no_hole: bool,
        fua: bool,
    ) -> io::Result<()> {
        match self {
            Backend::File(f) => f.zero(offset, len, !no_hole, fua).await,
            Backend::Nbd(n) => {
                let mut flags = fua_flag(fua);
                if no_hole {
                    flags |= NBD_CMD_FLAG_NO_HOLE;
                }
                n.command_len(NBD_CMD_WRITE_ZEROES, flags, offset, len)
                    .await
            }
        }
    }
}

fn fua_flag(fua: bool) -> u16 {
    if fua {
        NBD_CMD_FLAG_FUA
    } else {
        0
    }
}

fn glommio_err(e: glommio::GlommioError<()>) -> io::Error {
    io::Error::other(e.to_string())
}

/// A local file or block device.
#[derive(Debug)]
pub struct FileBackend {
    file: BufferedFile,
    size: u64,
}

/// Size of a file or block device (block devices report 0 in `stat`).
fn device_size(path: &Path) -> io::Result<u64> {
    use std::io::Seek;
    let mut file = std::fs::File::open(path)?;
    file.seek(io::SeekFrom::End(0))
}

/// Makes sure `path` exists, creating a file of `size` (fsynced with its
/// directory) when it does not. Returns its size. Called once at start.
pub fn prepare_file(path: &Path, size: Option<u64>) -> io::Result<u64> {
    match std::fs::metadata(path) {
        Ok(_) => device_size(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let Some(size) = size else {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{} does not exist and the export names no size to create it with",
                        path.display()
                    ),
                ));
            };
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)?;
            file.set_len(size)?;
            file.sync_all()?;
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::File::open(parent)?.sync_all()?;
            }
            Ok(size)
        }
        Err(e) => Err(e),
    }
}

impl FileBackend {
    /// Opens `path` (which [`prepare_file`] made sure exists).
    pub async fn open(path: &PathBuf, size: u64) -> io::Result<FileBackend> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .buffered_open(path)
            .await
            .map_err(glommio_err)?;
        Ok(FileBackend { file, size })
    }

    async fn read(&mut self, offset: u64, len: u32) -> io::Result<Vec<u8>> {
        let len = len as usize;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let at = offset + out.len() as u64;
            let got = self
                .file
                .read_at(at, len - out.len())
                .await
                .map_err(glommio_err)?;
            if got.is_empty() {
                // Past the end of a file that shrank underneath us.
                out.resize(len, 0);
                break;
            }
            out.extend_from_slice(&got);
        }
        Ok(out)
    }

    async fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        let mut written = 0;
        while written < data.len() {
            // write_at consumes its buffer: hand it a copy of the rest, so a
            // short write can continue (one memcpy, far below a syscall).
            let n = self
                .file
                .write_at(data[written..].to_vec(), offset + written as u64)
                .await
                .map_err(glommio_err)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "backend wrote 0 bytes",
                ));
            }
            written += n;
        }
        if fua {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(glommio_err)
    }

    async fn zero(&mut self, offset: u64, len: u32, punch: bool, fua: bool) -> io::Result<()> {
        if punch && self.file.deallocate(offset, u64::from(len)).await.is_ok() {
            if fua {
                self.flush().await?;
            }
            return Ok(());
        }
        // No hole punching here (a block device, a filesystem without it,
        // or NO_HOLE): write zeroes.
        let zeroes = vec![0; (len as usize).min(ZERO_CHUNK)];
        let mut done = 0u64;
        while done < u64::from(len) {
            let chunk = (u64::from(len) - done).min(ZERO_CHUNK as u64) as usize;
            self.write(offset + done, &zeroes[..chunk], false).await?;
            done += chunk as u64;
        }
        if fua {
            self.flush().await?;
        }
        Ok(())
    }
}

// Upstream NBD client: fixed newstyle, NBD_OPT_GO, simple replies.
const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1;
const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1;
const NBD_OPT_GO: u32 = 7;
const NBD_REP_ACK: u32 = 1;
const NBD_REP_INFO: u32 = 3;
const NBD_REP_FLAG_ERROR: u32 = 1 << 31;
const NBD_INFO_EXPORT: u16 = 0;
const NBD_FLAG_SEND_TRIM: u16 = 1 << 5;
const NBD_CMD_READ: u16 = 0;
const NBD_CMD_WRITE: u16 = 1;
const NBD_CMD_DISC: u16 = 2;
const NBD_CMD_FLUSH: u16 = 3;
const NBD_CMD_TRIM: u16 = 4;
const NBD_CMD_WRITE_ZEROES: u16 = 6;
const NBD_CMD_FLAG_FUA: u16 = 1;
const NBD_CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Longest option reply accepted from the upstream server.
const OPT_REPLY_MAX: u32 = 64 << 10;

/// A connection to an upstream NBD server.
#[derive(Debug)]
pub struct NbdUpstream {
    stream: TcpStream,
    size: u64,
    flags: u16,
    next_cookie: u64,
}

fn upstream_err(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl NbdUpstream {
    /// Connects and negotiates `export`.
    pub async fn connect(addr: SocketAddr, export: &str) -> io::Result<NbdUpstream> {
        let mut stream = TcpStream::connect(addr).await.map_err(glommio_err)?;
        stream.set_nodelay(true).map_err(glommio_err)?;
        let mut greeting = [0u8; 18];
        stream.read_exact(&mut greeting).await?;
        let magic = u64::from_be_bytes(greeting[0..8].try_into().expect("8"));
        let opt = u64::from_be_bytes(greeting[8..16].try_into().expect("8"));
        let flags = u16::from_be_bytes(greeting[16..18].try_into().expect("2"));
        if magic != NBDMAGIC || opt != IHAVEOPT || flags & NBD_FLAG_FIXED_NEWSTYLE == 0 {
            return Err(upstream_err(format!(
                "{addr} is not a fixed-newstyle NBD server"
            )));
        }
        stream
            .write_all(&NBD_FLAG_C_FIXED_NEWSTYLE.to_be_bytes())
            .await?;
        // NBD_OPT_GO: name length, name, no info requests.
        let name = export.as_bytes();
        let mut option = Vec::new();
        option.extend_from_slice(&IHAVEOPT.to_be_bytes());
        option.extend_from_slice(&NBD_OPT_GO.to_be_bytes());
        option.extend_from_slice(&(4 + name.len() as u32 + 2).to_be_bytes());
        option.extend_from_slice(&(name.len() as u32).to_be_bytes());
        option.extend_from_slice(name);
        option.extend_from_slice(&0u16.to_be_bytes());
        stream.write_all(&option).await?;
        let mut size = None;
        let mut tflags = 0;
        loop {
            let mut head = [0u8; 20];
            stream.read_exact(&mut head).await?;
            let magic = u64::from_be_bytes(head[0..8].try_into().expect("8"));
            let reply = u32::from_be_bytes(head[12..16].try_into().expect("4"));
            let len = u32::from_be_bytes(head[16..20].try_into().expect("4"));
            if magic != OPT_REPLY_MAGIC || len > OPT_REPLY_MAX {
                return Err(upstream_err(format!("{addr}: bad option reply")));
            }
            let mut data = vec![0u8; len as usize];
            stream.read_exact(&mut data).await?;
            if reply & NBD_REP_FLAG_ERROR != 0 {
                return Err(upstream_err(format!(
                    "{addr} refused export {export:?}: {}",
                    String::from_utf8_lossy(data.get(..).unwrap_or_default())
                )));
            }
            match reply {
                NBD_REP_INFO if data.len() >= 12 => {
                    let kind = u16::from_be_bytes([data[0], data[1]]);
                    if kind == NBD_INFO_EXPORT {
                        size = Some(u64::from_be_bytes(data[2..10].try_into().expect("8")));
                        tflags = u16::from_be_bytes([data[10], data[11]]);
                    }
                }
                NBD_REP_ACK => break,
                _ => {}
            }
        }
        let size = size.ok_or_else(|| upstream_err(format!("{addr} sent no export size")))?;
        Ok(NbdUpstream {
            stream,
            size,
            flags: tflags,
            next_cookie: 1,
        })
    }

    async fn send(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        len: u32,
        data: &[u8],
    ) -> io::Result<u64> {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let mut request = Vec::with_capacity(28 + data.len());
        request.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        request.extend_from_slice(&flags.to_be_bytes());
        request.extend_from_slice(&command.to_be_bytes());
        request.extend_from_slice(&cookie.to_be_bytes());
        request.extend_from_slice(&offset.to_be_bytes());
        request.extend_from_slice(&len.to_be_bytes());
        request.extend_from_slice(data);
        self.stream.write_all(&request).await?;
        Ok(cookie)
    }

    /// Reads a simple reply; its error as an `io::Error` carrying the NBD
    /// error number.
    async fn reply(&mut self, cookie: u64) -> io::Result<()> {
        let mut head = [0u8; 16];
        self.stream.read_exact(&mut head).await?;
        let magic = u32::from_be_bytes(head[0..4].try_into().expect("4"));
        let error = u32::from_be_bytes(head[4..8].try_into().expect("4"));
        let got = u64::from_be_bytes(head[8..16].try_into().expect("8"));
        if magic != SIMPLE_REPLY_MAGIC || got != cookie {
            return Err(upstream_err("upstream NBD reply out of step"));
        }
        if error != 0 {
            return Err(io::Error::from_raw_os_error(error as i32));
        }
        Ok(())
    }

    async fn read(&mut self, offset: u64, len: u32) -> io::Result<Vec<u8>> {
        let cookie = self.send(NBD_CMD_READ, 0, offset, len, &[]).await?;
        self.reply(cookie).await?;
        let mut data = vec![0u8; len as usize];
        self.stream.read_exact(&mut data).await?;
        Ok(data)
    }

    async fn command(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        data: &[u8],
    ) -> io::Result<()> {
        let len = u32::try_from(data.len()).map_err(|_| upstream_err("request too large"))?;
        let cookie = self.send(command, flags, offset, len, data).await?;
        self.reply(cookie).await
    }

    async fn command_len(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        len: u32,
    ) -> io::Result<()> {
        let cookie = self.send(command, flags, offset, len, &[]).await?;
        self.reply(cookie).await
    }

    /// Says goodbye to the upstream server.
    pub async fn disconnect(&mut self) {
        let _ = self.send(NBD_CMD_DISC, 0, 0, 0, &[]).await;
    }
}
