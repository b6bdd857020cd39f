//! A minimal NBD client for tests that need exact control of each write: fixed newstyle
//! handshake with `NBD_OPT_GO`, then one request at a time with simple replies. Built from the
//! protocol document (`NetworkBlockDevice/nbd`, `doc/proto.md`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;

/// One NBD connection in transmission phase.
pub struct NbdClient {
    stream: TcpStream,
    cookie: u64,
}

impl NbdClient {
    /// Connects to `address` (`host:port`) and opens export `name`.
    pub fn connect(address: &str, name: &str) -> std::io::Result<Self> {
        let mut stream = TcpStream::connect(address)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        stream.set_nodelay(true)?;
        let mut greeting = [0u8; 18];
        stream.read_exact(&mut greeting)?;
        if &greeting[..8] != b"NBDMAGIC"
            || u64::from_be_bytes(greeting[8..16].try_into().unwrap()) != IHAVEOPT
        {
            return Err(std::io::Error::other("not an NBD newstyle server"));
        }
        // Fixed newstyle, no zeroes.
        stream.write_all(&3u32.to_be_bytes())?;
        let mut option = Vec::new();
        option.extend_from_slice(&IHAVEOPT.to_be_bytes());
        option.extend_from_slice(&OPT_GO.to_be_bytes());
        option.extend_from_slice(&(4 + name.len() as u32 + 2).to_be_bytes());
        option.extend_from_slice(&(name.len() as u32).to_be_bytes());
        option.extend_from_slice(name.as_bytes());
        option.extend_from_slice(&0u16.to_be_bytes());
        stream.write_all(&option)?;
        loop {
            let mut header = [0u8; 20];
            stream.read_exact(&mut header)?;
            let magic = u64::from_be_bytes(header[..8].try_into().unwrap());
            let kind = u32::from_be_bytes(header[12..16].try_into().unwrap());
            let length = u32::from_be_bytes(header[16..20].try_into().unwrap());
            let mut data = vec![0u8; length as usize];
            stream.read_exact(&mut data)?;
            if magic != OPTION_REPLY_MAGIC {
                return Err(std::io::Error::other("bad option reply"));
            }
            if kind & 0x8000_0000 != 0 {
                let text = String::from_utf8_lossy(&data).into_owned();
                return Err(std::io::Error::other(format!(
                    "NBD_OPT_GO refused ({kind:#x}): {text}"
                )));
            }
            if kind == REP_ACK {
                break;
            }
        }
        Ok(Self { stream, cookie: 0 })
    }

    fn request(
        &mut self,
        kind: u16,
        offset: u64,
        length: u32,
        data: &[u8],
    ) -> std::io::Result<Vec<u8>> {
        self.cookie += 1;
        let mut request = Vec::with_capacity(28 + data.len());
        request.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        request.extend_from_slice(&0u16.to_be_bytes());
        request.extend_from_slice(&kind.to_be_bytes());
        request.extend_from_slice(&self.cookie.to_be_bytes());
        request.extend_from_slice(&offset.to_be_bytes());
        request.extend_from_slice(&length.to_be_bytes());
        request.extend_from_slice(data);
        self.stream.write_all(&request)?;
        let mut reply = [0u8; 16];
        self.stream.read_exact(&mut reply)?;
        let magic = u32::from_be_bytes(reply[..4].try_into().unwrap());
        let error = u32::from_be_bytes(reply[4..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(reply[8..16].try_into().unwrap());
        if magic != SIMPLE_REPLY_MAGIC || cookie != self.cookie {
            return Err(std::io::Error::other("bad reply"));
        }
        if error != 0 {
            return Err(std::io::Error::other(format!("NBD error {error}")));
        }
        let mut payload = vec![0u8; if kind == CMD_READ { length as usize } else { 0 }];
        self.stream.read_exact(&mut payload)?;
        Ok(payload)
    }

    /// Writes `data` at `offset` and waits for the reply.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let length = u32::try_from(data.len()).expect("small write");
        self.request(CMD_WRITE, offset, length, data).map(|_| ())
    }

    /// Reads `length` bytes at `offset`.
    pub fn read(&mut self, offset: u64, length: u32) -> std::io::Result<Vec<u8>> {
        self.request(CMD_READ, offset, length, &[])
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        self.cookie += 1;
        let mut request = Vec::new();
        request.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        request.extend_from_slice(&0u16.to_be_bytes());
        request.extend_from_slice(&CMD_DISC.to_be_bytes());
        request.extend_from_slice(&self.cookie.to_be_bytes());
        request.extend_from_slice(&[0u8; 12]);
        let _ = self.stream.write_all(&request);
    }
}
