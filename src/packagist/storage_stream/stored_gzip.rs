//! A gzip member of deflate *stored* blocks, framed by the input bytes alone.
//!
//! Why not flate2's encoder at level 0: where it cuts its stored blocks depends on how
//! the input arrived (the chunks SSH happened to deliver), so the same tar could give
//! different archives. A resumed stream must regenerate exactly the bytes the far end
//! already holds: here every block but the last holds exactly [`BLOCK`] input bytes, the
//! header has no name and no time, and the member ends with an empty final block. The
//! same tar always gives the same archive, whatever the chunking.

/// Input bytes per stored block (the format's maximum).
pub const BLOCK: usize = 65535;

/// The fixed header: magic, deflate, no flags, no mtime, no extra flags, OS unknown.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

#[derive(Default)]
pub struct StoredGzip {
    crc: flate2::Crc,
    pending: Vec<u8>,
    started: bool,
}

impl StoredGzip {
    /// Append `data`'s framing to `out`: the header first, then every full block.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        self.start(out);
        self.crc.update(data);
        while !data.is_empty() {
            let take = (BLOCK - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == BLOCK {
                block(false, &self.pending, out);
                self.pending.clear();
            }
        }
    }

    /// The rest: the last partial block, an empty final block, CRC-32 and size.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        self.start(out);
        if !self.pending.is_empty() {
            block(false, &self.pending, out);
        }
        block(true, &[], out);
        out.extend_from_slice(&self.crc.sum().to_le_bytes());
        out.extend_from_slice(&self.crc.amount().to_le_bytes());
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            out.extend_from_slice(&HEADER);
            self.started = true;
        }
    }
}

/// One stored block: BFINAL and BTYPE 00 in a byte of its own, LEN, NLEN, the bytes.
fn block(last: bool, data: &[u8], out: &mut Vec<u8>) {
    let len = data.len() as u16;
    out.push(u8::from(last));
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn framed(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut g = StoredGzip::default();
        let mut out = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            g.push(c, &mut out);
        }
        g.finish(&mut out);
        out
    }

    #[test]
    fn the_same_input_gives_the_same_archive_whatever_the_chunks() {
        let input: Vec<u8> = (0..3 * BLOCK + 17).map(|i| (i * 7 % 251) as u8).collect();
        let one = framed(&input, input.len());
        for chunk in [1, 100, BLOCK - 1, BLOCK, BLOCK + 1, 200_000] {
            assert_eq!(framed(&input, chunk), one, "chunk {chunk}");
        }
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&one[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, input);
        // Header, 4 blocks of framing, the empty final block, the trailer.
        assert_eq!(one.len(), 10 + input.len() + 4 * 5 + 5 + 8);
    }

    #[test]
    fn an_empty_input_is_a_valid_empty_gzip() {
        let out = framed(&[], 1);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
    }
}
