package dht

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/sipmesh/sipmesh/ssr"
)

// Records on disk. A node keeps the records it holds (its own range and its
// replica copies) in one file in its state directory, so that a restart of
// one node — or of every node after a power cut — loses nothing the ring
// held. The file is a log of length- and checksum-framed entries
// (FORMAT.md, "Disk file"): changes are appended in batches, the file is
// rewritten from the live records (write a temporary file, fsync, rename,
// fsync the directory) when it has grown to twice its last rewritten size,
// and a torn or damaged entry costs that entry, never the file. On start
// every record read goes through the same checks as one from the network —
// bounds, signature, version, quota, Validator — and its remaining time is
// counted down by the time the node was off.

// StoreFile is the name of the records file in the state directory.
const StoreFile = "dht-records"

const (
	diskMagic = "sipmesh dht records v1\n"
	frameHdr  = 8 // length, CRC-32C
	// Entry types.
	frameRecord = 1
	frameDrop   = 2
	frameSeq    = 3
	frameFixed  = 1 + 8 // type, saved
	// maxFrameBody bounds an entry: the largest record and its header.
	maxFrameBody = frameFixed + 1 + MaxKey + 32 + 8 + 4 + 1 + 2 + MaxValue + 64 + 8
	// compactSlack lets a small file grow by this much before a rewrite
	// beyond twice its compacted size, so a nearly empty store is not
	// rewritten at every flush.
	compactSlack = 256 << 10
	// maxLoadLogs bounds the log lines naming single dropped records.
	maxLoadLogs = 8
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// appendFrame appends one entry: a placeholder header, the type and saved
// time, then what add appends, and fills in the header.
func appendFrame(b []byte, typ byte, saved time.Time, add func([]byte) []byte) []byte {
	start := len(b)
	b = append(b, make([]byte, frameHdr)...)
	b = append(b, typ)
	b = binary.BigEndian.AppendUint64(b, uint64(saved.UnixMilli()))
	b = add(b)
	body := b[start+frameHdr:]
	binary.BigEndian.PutUint32(b[start:], uint32(len(body)))
	crc := crc32.Update(crc32.Checksum(b[start:start+4], crcTable), crcTable, body)
	binary.BigEndian.PutUint32(b[start+4:], crc)
	return b
}

func appendRecordFrame(b []byte, saved time.Time, r *Record) []byte {
	return appendFrame(b, frameRecord, saved, func(b []byte) []byte { return appendRecord(b, r) })
}

func appendDropFrame(b []byte, saved time.Time, id recID) []byte {
	return appendFrame(b, frameDrop, saved, func(b []byte) []byte {
		b = binary.BigEndian.AppendUint64(b, uint64(id.key))
		return binary.BigEndian.AppendUint64(b, uint64(id.writer))
	})
}

func appendSeqFrame(b []byte, saved time.Time, seq uint64) []byte {
	return appendFrame(b, frameSeq, saved, func(b []byte) []byte { return binary.BigEndian.AppendUint64(b, seq) })
}

// savedRecord is a record read from disk, its remaining time as counted
// when it was written.
type savedRecord struct {
	rec   Record
	saved time.Time
}

// diskContents is what a file held.
type diskContents struct {
	recs []savedRecord // the last state of each (key, writer), in file order
	seq  uint64        // the highest seq this node signed, as saved
	// Damage: byte ranges skipped (bad checksum or length, a torn tail),
	// and entries whose checksum held but whose content did not decode.
	corrupt, corruptBytes, bad int
	header                     bool // the file began with diskMagic
}

// frameAt returns the body of a well-formed entry at b's start.
func frameAt(b []byte) ([]byte, bool) {
	if len(b) < frameHdr+frameFixed {
		return nil, false
	}
	n := int(binary.BigEndian.Uint32(b))
	if n < frameFixed || n > maxFrameBody || len(b) < frameHdr+n {
		return nil, false
	}
	body := b[frameHdr : frameHdr+n]
	if body[0] < frameRecord || body[0] > frameSeq {
		return nil, false // cheap test first: a scan tries every offset
	}
	if crc32.Update(crc32.Checksum(b[:4], crcTable), crcTable, body) != binary.BigEndian.Uint32(b[4:]) {
		return nil, false
	}
	return body, true
}

// decodeDisk reads a records file. It never fails: a damaged stretch is
// skipped by scanning for the next entry whose length and checksum hold
// (at most the damaged entries are lost), and the outcome says what was
// skipped. Later entries replace earlier ones for the same (key, writer).
func decodeDisk(b []byte) diskContents {
	var c diskContents
	if len(b) >= len(diskMagic) && string(b[:len(diskMagic)]) == diskMagic {
		c.header = true
		b = b[len(diskMagic):]
	}
	at := make(map[recID]int)
	inDamage := false
	for len(b) > 0 {
		body, ok := frameAt(b)
		if !ok {
			if !inDamage {
				c.corrupt++
				inDamage = true
			}
			c.corruptBytes++
			b = b[1:]
			continue
		}
		inDamage = false
		b = b[frameHdr+len(body):]
		saved := time.UnixMilli(int64(binary.BigEndian.Uint64(body[1:])))
		p := body[frameFixed:]
		switch body[0] {
		case frameRecord:
			r, rest, err := readRecord(p)
			if err != nil || len(rest) != 0 {
				c.bad++
				continue
			}
			id := r.id()
			if i, ok := at[id]; ok {
				c.recs[i] = savedRecord{rec: r, saved: saved}
				continue
			}
			at[id] = len(c.recs)
			c.recs = append(c.recs, savedRecord{rec: r, saved: saved})
		case frameDrop:
			if len(p) != 16 {
				c.bad++
				continue
			}
			id := recID{ssr.NodeID(binary.BigEndian.Uint64(p)), ssr.NodeID(binary.BigEndian.Uint64(p[8:]))}
			if i, ok := at[id]; ok {
				c.recs[i].rec.Key = "" // dropped; compacted below
				delete(at, id)
			}
		case frameSeq:
			if len(p) != 8 {
				c.bad++
				continue
			}
			c.seq = max(c.seq, binary.BigEndian.Uint64(p))
		}
	}
	live := c.recs[:0]
	for _, s := range c.recs {
		if s.rec.Key != "" {
			live = append(live, s)
		}
	}
	c.recs = live
	return c
}

// diskFile is the records file: appends and atomic rewrites, each synced.
type diskFile struct {
	dir, path string
	f         *os.File // open for appending; nil before the first rewrite
}

func newDiskFile(dir string) *diskFile {
	return &diskFile{dir: dir, path: filepath.Join(dir, StoreFile)}
}

// read returns the file's contents (none if it does not exist yet).
func (d *diskFile) read() ([]byte, error) {
	b, err := os.ReadFile(d.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

// diskOp is one write: append data to the file, or replace the file by
// the header and data.
type diskOp struct {
	rewrite bool
	data    []byte
}

func (d *diskFile) do(op diskOp) error {
	if op.rewrite {
		return d.rewrite(op.data)
	}
	if d.f == nil {
		return fmt.Errorf("dht: append to %s: not rewritten since start", d.path)
	}
	if _, err := d.f.Write(op.data); err != nil {
		return fmt.Errorf("dht: append to %s: %w", d.path, err)
	}
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("dht: fsync %s: %w", d.path, err)
	}
	return nil
}

// rewrite replaces the file atomically: a crash at any point leaves the
// old file or the new one, whole (the temporary file is synced before the
// rename, the directory after it, so the rename survives a power cut).
func (d *diskFile) rewrite(data []byte) error {
	if err := os.MkdirAll(d.dir, 0o700); err != nil {
		return fmt.Errorf("dht: %w", err)
	}
	tmp := d.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("dht: %w", err)
	}
	_, err = f.Write(append([]byte(diskMagic), data...))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, d.path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("dht: rewrite %s: %w", d.path, err)
	}
	if dir, err := os.Open(d.dir); err == nil {
		err = dir.Sync()
		dir.Close()
		if err != nil {
			return fmt.Errorf("dht: fsync %s: %w", d.dir, err)
		}
	}
	if d.f != nil {
		d.f.Close()
	}
	d.f, err = os.OpenFile(d.path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("dht: %w", err)
	}
	return nil
}

func (d *diskFile) close() {
	if d.f != nil {
		d.f.Close()
		d.f = nil
	}
}

// journal keeps one Node's store in a diskFile. Its methods run where the
// Node runs (the driver's loop); the diskOps they return may be carried out
// elsewhere, in order.
type journal struct {
	file *diskFile
	log  *slog.Logger
	// Bytes in the file once the ops handed out are done, and right after
	// the last rewrite.
	size, base int
	full       bool   // the next flush rewrites the file
	seqSaved   uint64 // the node's seq floor as last written
	slack      int    // compactSlack; smaller in tests
	rewrites   int    // rewrites handed out
}

// loadReport says what a load found.
type loadReport struct {
	Loaded, Expired, Refused   int
	Corrupt, CorruptBytes, Bad int
	Header                     bool
	FileBytes                  int
	RefusedErrs                []error // the first maxLoadLogs refusals
}

// openJournal returns the journal of the records file in dir.
func openJournal(dir string, log *slog.Logger) *journal {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &journal{file: newDiskFile(dir), log: log, slack: compactSlack}
}

// load reads the file into n, whose store must be empty, and starts
// keeping n's changes. Each record is checked as one from the network
// (Node.accept) with its remaining time counted down by the wall-clock
// time since it was written; a clock that went back (a router without a
// clock after a power cut) counts that time as zero, so records then live
// longer than they should by the outage, never shorter. A record that
// fails a check is dropped and logged. Only a file that cannot be read is
// an error. The next flush rewrites the file from what loaded, which also
// drops any damaged tail before appends resume.
func (j *journal) load(now time.Time, n *Node) (loadReport, error) {
	b, err := j.file.read()
	if err != nil {
		return loadReport{}, fmt.Errorf("dht: read %s: %w", j.file.path, err)
	}
	rep := j.apply(now, n, b)
	n.keepChanges()
	j.full = true
	return rep, nil
}

// apply loads the contents b of a records file into n (load).
func (j *journal) apply(now time.Time, n *Node, b []byte) loadReport {
	c := decodeDisk(b)
	rep := loadReport{Corrupt: c.corrupt, CorruptBytes: c.corruptBytes, Bad: c.bad, Header: c.header || len(b) == 0, FileBytes: len(b)}
	n.seqFloor = max(n.seqFloor, c.seq)
	for i := range c.recs {
		s := &c.recs[i]
		r := s.rec
		if el := now.Sub(s.saved); el > 0 {
			r.Remaining -= el
		}
		if r.Remaining <= 0 {
			rep.Expired++
			continue
		}
		if err := n.load(now, &r); err != nil {
			rep.Refused++
			if len(rep.RefusedErrs) < maxLoadLogs {
				rep.RefusedErrs = append(rep.RefusedErrs, fmt.Errorf("key %q writer %s: %w", r.Key, WriterID(r.Writer), err))
			}
			continue
		}
		rep.Loaded++
	}
	for _, err := range rep.RefusedErrs {
		j.log.Warn("dropped a record read from disk", "file", j.file.path, "err", err)
	}
	attrs := []any{"file", j.file.path, "loaded", rep.Loaded, "expired", rep.Expired, "refused", rep.Refused}
	if rep.Corrupt > 0 || rep.Bad > 0 || !rep.Header {
		j.log.Warn("records file damaged; the damaged entries are lost",
			append(attrs, "damaged_ranges", rep.Corrupt, "damaged_bytes", rep.CorruptBytes, "bad_entries", rep.Bad, "header", rep.Header)...)
	} else {
		j.log.Info("records loaded from disk", attrs...)
	}
	return rep
}

// sync writes what flush returns, here and now: at start (the rewrite
// after load) and at stop. A failed write makes the next flush rewrite.
func (j *journal) sync(now time.Time, n *Node) error {
	op, ok := j.flush(now, n)
	if !ok {
		return nil
	}
	err := j.file.do(op)
	if err != nil {
		j.failed()
	}
	return err
}

// flush returns the write that brings the file up to date with n: the
// changes since the last flush as appended entries, or — after an
// overflow of the change set, a failed write, or once the file has grown
// to twice its last rewritten size — the whole store as a rewrite. ok is
// false when there is nothing to write.
func (j *journal) flush(now time.Time, n *Node) (op diskOp, ok bool) {
	st := n.st
	// A fresh buffer each time: the op owns its bytes, which may be
	// written while the next flush runs.
	var b []byte
	if j.full || st.overflow || j.size > 2*j.base+j.slack {
		for _, id := range st.index() {
			if e := st.get(now, id); e != nil {
				r := e.record(now)
				b = appendRecordFrame(b, now, &r)
			}
		}
		if n.seqFloor > 0 {
			b = appendSeqFrame(b, now, n.seqFloor)
		}
		clear(st.changes)
		st.overflow, j.full = false, false
		j.seqSaved = n.seqFloor
		j.base = len(diskMagic) + len(b)
		j.size = j.base
		j.rewrites++
		return diskOp{rewrite: true, data: b}, true
	}
	for id := range st.changes {
		if e := st.get(now, id); e != nil {
			r := e.record(now)
			b = appendRecordFrame(b, now, &r)
		} else {
			b = appendDropFrame(b, now, id)
		}
	}
	clear(st.changes)
	if n.seqFloor > j.seqSaved {
		b = appendSeqFrame(b, now, n.seqFloor)
		j.seqSaved = n.seqFloor
	}
	if len(b) == 0 {
		return diskOp{}, false
	}
	j.size += len(b)
	return diskOp{data: b}, true
}

// failed makes the next flush rewrite the file: a failed write may have
// left a torn entry and lost a batch.
func (j *journal) failed() { j.full = true }
