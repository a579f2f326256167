//! The download machine against a tiny world of replicas that can be down, slow or hold bad
//! bytes, with a virtual clock and completions delivered in time order.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

const CHUNK: u64 = crate::chunking::MIN_CHUNK_SIZE;

fn sha(index: u32) -> Sha256Digest {
    Sha256Digest::of(format!("chunk {index}").as_bytes())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replica {
    Good,
    Down,
    /// Serves bytes that do not match.
    Rotten,
    /// Found its own copy bad and says so.
    SelfChecked,
}

struct World {
    now: Timestamp,
    seq: u64,
    queue: BinaryHeap<Reverse<(Timestamp, u64, usize)>>,
    events: Vec<Option<Event>>,
    /// (chunk, node) -> what that replica does; nodes not listed are good.
    replicas: BTreeMap<(u32, u64), Replica>,
    /// Per node, latency in ms.
    latency: BTreeMap<u64, u64>,
    /// Chunks whose bytes the driver holds, and whether they are the right bytes.
    held: BTreeMap<u32, bool>,
    held_max: usize,
    written: Vec<u32>,
    reported: Vec<(u32, u64)>,
    outcome: Option<Result<(), DownloadError>>,
    file_sha: Sha256Digest,
    finished_output: bool,
    /// Where each chunk starts, when not at `index * CHUNK` (a joined file's).
    offsets: Option<Vec<u64>>,
}

impl World {
    fn new(file_sha: Sha256Digest) -> Self {
        World {
            now: Timestamp(0),
            seq: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            replicas: BTreeMap::new(),
            latency: BTreeMap::new(),
            held: BTreeMap::new(),
            held_max: 0,
            written: Vec::new(),
            reported: Vec::new(),
            outcome: None,
            file_sha,
            finished_output: false,
            offsets: None,
        }
    }

    fn deliver(&mut self, after_ms: u64, event: Event) {
        self.seq += 1;
        self.events.push(Some(event));
        self.queue.push(Reverse((Timestamp(self.now.0 + after_ms), self.seq, self.events.len() - 1)));
    }

    fn execute(&mut self, action: Action, size_of: impl Fn(u32) -> u64) {
        match action {
            Action::Fetch { index, attempt, from, .. } => {
                let latency = self.latency.get(&from.id).copied().unwrap_or(2);
                match self.replicas.get(&(index, from.id)).copied().unwrap_or(Replica::Good) {
                    Replica::Good => {
                        assert!(self.held.insert(index, true).is_none(), "chunk {index} fetched twice at once");
                        self.held_max = self.held_max.max(self.held.len());
                        self.deliver(latency, Event::Fetched { index, attempt, len: size_of(index), sha256: sha(index) });
                    }
                    Replica::Rotten => {
                        assert!(self.held.insert(index, false).is_none());
                        self.deliver(latency, Event::Fetched { index, attempt, len: size_of(index), sha256: Sha256Digest::of(b"rot") });
                    }
                    Replica::Down => self.deliver(40, Event::FetchFailed { index, attempt, error: RpcError::Transport("refused".into()) }),
                    Replica::SelfChecked => self.deliver(latency, Event::FetchFailed { index, attempt, error: RpcError::ChecksumMismatch("bad copy".into()) }),
                }
            }
            Action::Discard { index } => assert!(self.held.remove(&index).is_some(), "discard of {index} not held"),
            Action::Write { index, offset } => {
                let expected = self.offsets.as_ref().map_or(index as u64 * CHUNK, |o| o[index as usize]);
                assert_eq!(offset, expected, "chunk {index} written at the wrong offset");
                assert_eq!(self.held.remove(&index), Some(true), "write of chunk {index}: not held, or bad bytes");
                self.written.push(index);
                self.deliver(1, Event::Written { index });
            }
            Action::ReportBad { node, chunk_id, .. } => {
                let index = u32::from_le_bytes(chunk_id[..4].try_into().unwrap());
                self.reported.push((index, node.id));
            }
            Action::HashFile => {
                let sha = self.file_sha;
                self.deliver(1, Event::FileHashed { sha256: sha });
            }
            Action::Finish => {
                self.finished_output = true;
                self.deliver(1, Event::Finished);
            }
            Action::Progress { .. } => {}
            Action::Done => self.outcome = Some(Ok(())),
            Action::Failed(e) => self.outcome = Some(Err(e)),
        }
    }

    fn run(&mut self, d: &mut Download, size_of: impl Fn(u32) -> u64 + Copy) {
        for _ in 0..100_000 {
            while let Some(a) = d.poll_action() {
                self.execute(a, size_of);
            }
            if d.is_finished() {
                // Bytes of fetches still in flight are the driver's to drop.
                return;
            }
            let next = self.queue.peek().map(|Reverse((at, _, _))| *at);
            match (next, d.poll_timeout()) {
                (Some(at), t) if t.is_none_or(|t| at <= t) => {
                    let Reverse((at, _, i)) = self.queue.pop().unwrap();
                    self.now = self.now.max(at);
                    let event = self.events[i].take().unwrap();
                    // A fetch completing after the chunk was given up is dropped by the driver.
                    d.handle(event, self.now);
                }
                (_, Some(t)) => {
                    self.now = self.now.max(t);
                    d.handle_timeout(self.now);
                }
                (Some(_), None) => unreachable!(),
                (None, None) => panic!("the download waits for nothing"),
            }
        }
        panic!("the download did not finish");
    }
}

fn file(chunks: u32, nodes: &[u64], file_sha: &[u8]) -> (proto::FileInfo, Vec<proto::ChunkLocation>) {
    let size = chunks as u64 * CHUNK - if chunks > 0 { 5 } else { 0 };
    let info = proto::FileInfo { size, chunk_size: CHUNK, sha256: Bytes::copy_from_slice(file_sha), ..Default::default() };
    let locations = (0..chunks)
        .map(|index| proto::ChunkLocation {
            index,
            chunk_id: Bytes::copy_from_slice(&[index.to_le_bytes().as_slice(), &[0u8; 12]].concat()),
            size: crate::chunking::chunk_len(size, CHUNK, index).unwrap(),
            sha256: Bytes::copy_from_slice(&sha(index).0),
            replicas: nodes.iter().map(|&id| proto::StorageNode { id, addr: format!("n{id}") }).collect(),
            replica_status: vec![],
            chain: None,
            token: None,
        })
        .collect();
    (info, locations)
}

fn size_of(chunks: u32) -> impl Fn(u32) -> u64 + Copy {
    move |i| if i + 1 == chunks { CHUNK - 5 } else { CHUNK }
}

fn file_sha() -> Sha256Digest {
    Sha256Digest::of(b"the file")
}

#[test]
fn writes_in_order_within_the_window_even_when_replicas_answer_out_of_order() {
    let (info, chunks) = file(12, &[1, 2, 3], &file_sha().0);
    let mut d = Download::new(&info, chunks, DownloadConfig::default()).unwrap();
    let mut w = World::new(file_sha());
    // Node 1 serves the even chunks' first choice slowly: completions come out of order.
    w.latency.insert(1, 30);
    for i in (0..12).step_by(3) {
        w.replicas.insert((i, 1), Replica::Good);
    }
    w.run(&mut d, size_of(12));
    assert_eq!(w.outcome, Some(Ok(())));
    assert_eq!(w.written, (0..12).collect::<Vec<_>>());
    assert!(w.held_max <= 4);
    assert!(w.finished_output);
}

#[test]
fn bad_replicas_are_reported_skipped_and_the_read_fails_over() {
    let (info, chunks) = file(4, &[1, 2, 3], &file_sha().0);
    let mut d = Download::new(&info, chunks, DownloadConfig::default()).unwrap();
    let mut w = World::new(file_sha());
    w.replicas.insert((0, 1), Replica::Rotten);
    w.replicas.insert((1, 1), Replica::Down);
    w.replicas.insert((1, 2), Replica::SelfChecked);
    w.replicas.insert((2, 1), Replica::Rotten);
    w.replicas.insert((2, 2), Replica::Rotten);
    w.run(&mut d, size_of(4));
    assert_eq!(w.outcome, Some(Ok(())));
    assert_eq!(w.written, vec![0, 1, 2, 3]);
    // The client reports what it saw; a node that found its own copy bad reported it itself.
    assert_eq!(w.reported, vec![(0, 1), (2, 1), (2, 2)]);
}

#[test]
fn a_chunk_with_every_replica_down_fails_after_the_rounds_with_each_error() {
    let (info, chunks) = file(2, &[1, 2], &file_sha().0);
    let mut d = Download::new(&info, chunks, DownloadConfig::default()).unwrap();
    let mut w = World::new(file_sha());
    w.replicas.insert((1, 1), Replica::Down);
    w.replicas.insert((1, 2), Replica::Down);
    w.run(&mut d, size_of(2));
    match w.outcome.clone().unwrap() {
        Err(DownloadError::ChunkUnavailable { index: 1, errors }) => assert!(errors.contains("n1") && errors.contains("n2"), "{errors}"),
        other => panic!("{other:?}"),
    }
    assert!(!w.finished_output);
    // Three rounds with backoffs of 500 and 1000 ms between them.
    assert!(w.now.0 >= 1500, "gave up after {} ms", w.now.0);
}

#[test]
fn a_chunk_whose_every_replica_is_bad_fails_at_once() {
    let (info, chunks) = file(1, &[1, 2], &file_sha().0);
    let mut d = Download::new(&info, chunks, DownloadConfig::default()).unwrap();
    let mut w = World::new(file_sha());
    w.replicas.insert((0, 1), Replica::Rotten);
    w.replicas.insert((0, 2), Replica::SelfChecked);
    w.run(&mut d, size_of(1));
    assert!(matches!(w.outcome, Some(Err(DownloadError::ChunkUnavailable { .. }))));
    assert!(w.now.0 < 500, "waited for a round that could not help");
}

#[test]
fn a_whole_file_checksum_mismatch_is_never_finished() {
    let (info, chunks) = file(3, &[1], &Sha256Digest::of(b"another file").0);
    let mut d = Download::new(&info, chunks, DownloadConfig::default()).unwrap();
    let mut w = World::new(file_sha());
    w.run(&mut d, size_of(3));
    assert!(matches!(w.outcome, Some(Err(DownloadError::FileChecksumMismatch { .. }))));
    assert!(!w.finished_output);
}

#[test]
fn a_file_without_a_recorded_checksum_still_downloads_and_an_empty_file_needs_no_fetch() {
    let (info, chunks) = file(2, &[1], &[]);
    let mut d = Download::new(&info, chunks, DownloadConfig::default()).unwrap();
    let mut w = World::new(file_sha());
    w.run(&mut d, size_of(2));
    assert_eq!(w.outcome, Some(Ok(())));
    let (info, chunks) = file(0, &[1], &[]);
    let mut d = Download::new(&info, chunks, DownloadConfig::default()).unwrap();
    let mut w = World::new(file_sha());
    w.run(&mut d, size_of(0));
    assert_eq!(w.outcome, Some(Ok(())));
    assert!(w.written.is_empty());
}

#[test]
fn chunk_lists_that_do_not_tile_the_file_are_refused() {
    let (info, mut chunks) = file(3, &[1], &[]);
    chunks.remove(1);
    assert!(matches!(Download::new(&info, chunks, DownloadConfig::default()), Err(DownloadError::BadChunkList(_))));
    let (info, mut chunks) = file(2, &[1], &[]);
    chunks[0].size -= 1;
    assert!(matches!(Download::new(&info, chunks, DownloadConfig::default()), Err(DownloadError::BadChunkList(_))));
    let (info, mut chunks) = file(2, &[1], &[]);
    chunks[1].sha256 = Bytes::new();
    assert!(matches!(Download::new(&info, chunks, DownloadConfig::default()), Err(DownloadError::BadChunkList(_))));
}

/// A joined copy (an S3 multipart object) has chunks of any size: each is written at the sum
/// of the sizes before it, and a list whose sizes do not add up to the file is refused.
#[test]
fn a_joined_files_chunks_of_any_size_land_at_their_offsets() {
    let sizes = [CHUNK, 100, CHUNK, 7, 1, CHUNK - 64];
    let (mut info, mut chunks) = file(sizes.len() as u32, &[1, 2], &[]);
    info.size = sizes.iter().sum();
    for (c, size) in chunks.iter_mut().zip(sizes) {
        c.size = size;
    }
    let mut d = Download::new(&info, chunks.clone(), DownloadConfig { chunks_in_flight_max: 2, ..DownloadConfig::default() }).unwrap();
    let mut w = World::new(file_sha());
    w.offsets = Some(sizes.iter().scan(0, |at, s| Some(std::mem::replace(at, *at + s))).collect());
    w.replicas.insert((1, 1), Replica::Rotten);
    w.run(&mut d, |i| sizes[i as usize]);
    assert_eq!(w.outcome, Some(Ok(())));
    assert_eq!(w.written, (0..sizes.len() as u32).collect::<Vec<_>>());
    for (break_it, what) in [(0usize, "a chunk larger than the chunk size"), (1, "an empty chunk"), (2, "sizes that do not add up")] {
        let mut list = chunks.clone();
        match break_it {
            0 => list[1].size = CHUNK + 1,
            1 => list[3].size = 0,
            _ => list[4].size = 2,
        }
        assert!(matches!(Download::new(&info, list, DownloadConfig::default()), Err(DownloadError::BadChunkList(_))), "{what}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../proptest-regressions/core-client-download.txt")))),
        cases: 256,
        ..ProptestConfig::default()
    })]
    /// Whatever the replicas do, the download never writes bad bytes or out of order, stays
    /// in its window, and succeeds whenever every chunk has a good replica.
    #[test]
    fn never_writes_wrong_bytes_and_succeeds_while_a_good_replica_exists(
        chunks in 0u32..30,
        window in 1usize..6,
        behaviour in proptest::collection::vec((0u32..30, 1u64..4, 0u8..4), 0..40),
    ) {
        let (info, locations) = file(chunks, &[1, 2, 3], &file_sha().0);
        let mut d = Download::new(&info, locations, DownloadConfig { chunks_in_flight_max: window, ..DownloadConfig::default() }).unwrap();
        let mut w = World::new(file_sha());
        for (chunk, node, kind) in behaviour {
            let kind = [Replica::Good, Replica::Down, Replica::Rotten, Replica::SelfChecked][kind as usize];
            w.replicas.insert((chunk, node), kind);
        }
        w.run(&mut d, size_of(chunks));
        prop_assert!(w.held_max <= window);
        let mut sorted = w.written.clone();
        sorted.sort();
        prop_assert_eq!(&sorted, &w.written);
        let servable = (0..chunks).all(|c| (1..=3).any(|n| w.replicas.get(&(c, n)).copied().unwrap_or(Replica::Good) == Replica::Good));
        match w.outcome.clone().unwrap() {
            Ok(()) => prop_assert_eq!(w.written, (0..chunks).collect::<Vec<_>>()),
            Err(e) => prop_assert!(!servable, "failed though every chunk had a good replica: {e}"),
        }
    }
}

/// A file whose chunks are chained: their checks prove the file's SHA-256, so no second pass;
/// a chain that does not follow from the chunks before it is metadata's error, refused.
#[test]
fn a_chained_file_needs_no_second_pass_and_a_broken_chain_is_refused() {
    let bytes: Vec<u8> = (0..(3 * CHUNK - 5)).map(|i| (i % 251) as u8).collect();
    let whole = Sha256Digest::of(&bytes);
    let (info, mut chunks) = file(3, &[1, 2, 3], &whole.0);
    let mut before = crate::chain::Chain::initial();
    for c in chunks.iter_mut() {
        let i = c.index as usize;
        let part = &bytes[i * CHUNK as usize..((i + 1) * CHUNK as usize).min(bytes.len())];
        let chain = crate::chain::Chain::at(c.index, CHUNK, before, i == 2);
        let sum = crate::chain::checksum(part, Some(&chain));
        c.sha256 = Bytes::copy_from_slice(&sum.0);
        c.chain = Some(chain.to_proto());
        before = sum;
    }
    assert_eq!(before, whole, "the last chunk's checksum is the file's SHA-256");
    let d = Download::new(&info, chunks.clone(), DownloadConfig::default()).unwrap();
    assert!(!d.needs_file_pass());
    assert_eq!(d.chain(1).map(|c| c.offset), Some(CHUNK));
    // The same chunks under another file digest: the chunks no longer prove it, so the pass
    // is made (and fails at its end).
    let (other, _) = file(3, &[1, 2, 3], &file_sha().0);
    assert!(Download::new(&other, chunks.clone(), DownloadConfig::default()).unwrap().needs_file_pass());
    // Standalone chunks of several (an earlier version's file): the pass is made.
    let (info_old, old) = file(3, &[1, 2, 3], &whole.0);
    assert!(Download::new(&info_old, old, DownloadConfig::default()).unwrap().needs_file_pass());
    // Broken chains: a wrong `before`, an offset off its chunk, a last flag on the wrong chunk.
    for k in 0..4 {
        let mut list = chunks.clone();
        match k {
            0 => list[1].chain.as_mut().unwrap().before = Bytes::copy_from_slice(&[0; 32]),
            1 => list[2].chain.as_mut().unwrap().offset += 64,
            2 => list[1].chain.as_mut().unwrap().last = true,
            _ => list[0].chain = None,
        }
        assert!(matches!(Download::new(&info, list, DownloadConfig::default()), Err(DownloadError::BadChunkList(_))), "break {k}");
    }
}
