//! What a camera's capture process tells the bridge, over its standard output: frames (pixels as
//! OpenCV holds them, with their capture time) and events (the source opened, failed, skipped or
//! dropped a frame, ended). Little-endian, one tag byte per message.

use std::io::{self, Read, Write};

use opencv::core::Mat;
use opencv::prelude::*;

const FRAME: u8 = b'F';
const EVENT: u8 = b'E';

/// The largest frame the bridge takes from a capture process (a 16K × 8K BGR frame is 384 MiB).
const MAX_FRAME_BYTES: usize = 512 << 20;

/// Something the capture process saw, for the camera's counts and gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The source opened; `reopened` when it had been open before in this process.
    Opened { reopened: bool },
    /// The source failed or closed; it will be reopened.
    Closed,
    /// A frame read and skipped to keep the camera's frame-rate cap.
    RateCapped,
    /// A frame read and dropped because it was already older than `max_frame_age_ms`.
    Stale,
    /// A video file ended: no more frames.
    Ended,
}

impl Event {
    fn encode(self) -> (u8, u64) {
        match self {
            Self::Opened { reopened } => (1, u64::from(reopened)),
            Self::Closed => (2, 0),
            Self::RateCapped => (4, 0),
            Self::Stale => (5, 0),
            Self::Ended => (6, 0),
        }
    }

    fn decode(kind: u8, value: u64) -> io::Result<Self> {
        Ok(match kind {
            1 => Self::Opened { reopened: value != 0 },
            2 => Self::Closed,
            4 => Self::RateCapped,
            5 => Self::Stale,
            6 => Self::Ended,
            other => return Err(invalid(format!("unknown event {other}"))),
        })
    }
}

/// A message read from a capture process.
pub enum Message {
    Frame { image: Mat, captured_unix_us: u64 },
    Event(Event),
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

pub fn write_event(out: &mut impl Write, event: Event) -> io::Result<()> {
    let (kind, value) = event.encode();
    out.write_all(&[EVENT, kind])?;
    out.write_all(&value.to_le_bytes())?;
    out.flush()
}

/// Writes a frame: its capture time, OpenCV's shape and type, then the pixels.
pub fn write_frame(out: &mut impl Write, image: &Mat, captured_unix_us: u64) -> io::Result<()> {
    let cv = |e: opencv::Error| io::Error::other(e.message);
    let continuous;
    let image = if image.is_continuous() {
        image
    } else {
        continuous = image.try_clone().map_err(cv)?;
        &continuous
    };
    let bytes = image.data_bytes().map_err(cv)?;
    out.write_all(&[FRAME])?;
    out.write_all(&captured_unix_us.to_le_bytes())?;
    for field in [image.rows(), image.cols(), image.typ()] {
        out.write_all(&field.to_le_bytes())?;
    }
    out.write_all(&u64::try_from(bytes.len()).unwrap_or(u64::MAX).to_le_bytes())?;
    out.write_all(bytes)?;
    out.flush()
}

/// The next message; `None` at the end of the stream (the process exited or closed its output).
pub fn read_message(input: &mut impl Read) -> io::Result<Option<Message>> {
    let mut tag = [0u8; 1];
    match input.read_exact(&mut tag) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    match tag[0] {
        EVENT => {
            let mut kind = [0u8; 1];
            input.read_exact(&mut kind)?;
            let value = read_u64(input)?;
            Ok(Some(Message::Event(Event::decode(kind[0], value)?)))
        }
        FRAME => {
            let captured_unix_us = read_u64(input)?;
            let (rows, cols, typ) = (read_i32(input)?, read_i32(input)?, read_i32(input)?);
            let len = usize::try_from(read_u64(input)?).map_err(|_| invalid("frame too large".into()))?;
            if rows <= 0 || cols <= 0 || len > MAX_FRAME_BYTES {
                return Err(invalid(format!("a {cols}x{rows} frame of {len} bytes")));
            }
            let cv = |e: opencv::Error| invalid(e.message);
            let mut image =
                Mat::new_rows_cols_with_default(rows, cols, typ, opencv::core::Scalar::all(0.0)).map_err(cv)?;
            let pixels = image.data_bytes_mut().map_err(cv)?;
            if pixels.len() != len {
                return Err(invalid(format!("a {cols}x{rows} frame of type {typ} is not {len} bytes")));
            }
            input.read_exact(pixels)?;
            Ok(Some(Message::Frame { image, captured_unix_us }))
        }
        other => Err(invalid(format!("unknown message tag {other}"))),
    }
}

fn read_u64(input: &mut impl Read) -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    input.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

fn read_i32(input: &mut impl Read) -> io::Result<i32> {
    let mut bytes = [0u8; 4];
    input.read_exact(&mut bytes)?;
    Ok(i32::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_events_arrive_as_written() {
        let mut image =
            Mat::new_rows_cols_with_default(3, 5, opencv::core::CV_8UC3, opencv::core::Scalar::all(0.0)).unwrap();
        for (i, byte) in image.data_bytes_mut().unwrap().iter_mut().enumerate() {
            *byte = i as u8;
        }
        let mut wire = Vec::new();
        write_event(&mut wire, Event::Opened { reopened: true }).unwrap();
        write_frame(&mut wire, &image, 1_765_000_000_123_456).unwrap();
        write_event(&mut wire, Event::Stale).unwrap();
        let mut input = wire.as_slice();
        assert!(matches!(read_message(&mut input).unwrap(), Some(Message::Event(Event::Opened { reopened: true }))));
        match read_message(&mut input).unwrap() {
            Some(Message::Frame { image: read, captured_unix_us }) => {
                assert_eq!(captured_unix_us, 1_765_000_000_123_456);
                assert_eq!((read.rows(), read.cols(), read.typ()), (3, 5, opencv::core::CV_8UC3));
                assert_eq!(read.data_bytes().unwrap(), image.data_bytes().unwrap());
            }
            _ => panic!("a frame"),
        }
        assert!(matches!(read_message(&mut input).unwrap(), Some(Message::Event(Event::Stale))));
        assert!(read_message(&mut input).unwrap().is_none(), "the end of the stream");
    }

    #[test]
    fn a_frame_cut_short_or_a_wrong_size_is_an_error_not_a_frame() {
        let image =
            Mat::new_rows_cols_with_default(4, 4, opencv::core::CV_8UC1, opencv::core::Scalar::all(7.0)).unwrap();
        let mut wire = Vec::new();
        write_frame(&mut wire, &image, 1).unwrap();
        assert!(read_message(&mut &wire[..wire.len() - 1]).is_err(), "cut short");
        // The length field claims 17 bytes for a 4x4 single-channel frame.
        let len_at = 1 + 8 + 12;
        wire[len_at] = 17;
        assert!(read_message(&mut wire.as_slice()).is_err(), "wrong size");
        assert!(read_message(&mut [b'X'].as_slice()).is_err(), "unknown tag");
    }
}
