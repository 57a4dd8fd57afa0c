package dht

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sipmesh/sipmesh/ssr"
)

// Driver bounds.
const (
	// driverInbound bounds datagrams read from the mesh socket and not yet
	// handled; more wait in the socket's own bounded queue.
	driverInbound = 256
	// driverRequests bounds application calls waiting for the loop.
	driverRequests = 256
	// DefaultFlushInterval is how often changes of the store are written
	// to disk: what a power cut can lose of what this node alone holds.
	DefaultFlushInterval = 2 * time.Second
)

// DriverConfig configures a Driver.
type DriverConfig struct {
	// Router is the node's SSR router; the driver binds mesh port Port on
	// it. The router's Run may start before or after the driver's.
	Router *ssr.Router
	// Key signs this node's records: usually the node key.
	Key    ed25519.PrivateKey
	Params Params
	Logger *slog.Logger
	// StateDir, if set, keeps the records this node holds in
	// StateDir/StoreFile, loaded (and checked) when Run starts, so they
	// survive a restart; empty keeps them in memory only.
	StateDir string
	// FlushInterval is how often changes are written to disk
	// (DefaultFlushInterval when zero). Writes run beside the loop, so a
	// slow disk delays them, never the DHT.
	FlushInterval time.Duration
}

// Driver runs a Node on an ssr.Router with real time: one goroutine owns
// the Node and serialises datagrams, timers, ring updates and application
// calls; Put, Get and Delete block until the answer or ctx's end.
type Driver struct {
	r    *ssr.Router
	node *Node
	log  *slog.Logger

	reqs    chan call
	started chan struct{}
	stopped chan struct{}
	runOnce atomic.Bool

	// Disk: the journal is owned by the loop, the file by the writer
	// goroutine while Run runs.
	journal    *journal
	flushEvery time.Duration
	diskOps    chan diskOp // to the writer; one queued at most
	diskFailed atomic.Bool // a write failed: rewrite the file next time
	diskErrors atomic.Uint64
	diskBusy   atomic.Int32 // writes queued or running
	loaded     loadReport

	// Owned by the loop. A get for a key already asked for joins the one
	// in flight (getting, joined): a proxy under load looks up the same
	// few AORs many times a second, and each answer is as fresh as the
	// request's own would be, give or take the round trip in flight.
	waiters map[uint64]chan Result
	getting map[string]inFlight
	joined  map[uint64][]chan Result
	joins   uint64
	succ    []ssr.NodeID
	pred    []ssr.NodeID

	mu      sync.Mutex
	metrics Metrics // snapshot, refreshed by the loop
}

// inFlight is a get being asked: its ID and when it was sent.
type inFlight struct {
	id uint64
	at time.Time
}

// joinWithin is how old a get in flight may be for another to join it:
// a get always ends (answer or timeout, well within it), so this only
// guards against waiting on one that somehow never does.
const joinWithin = 10 * time.Second

type call struct {
	op    Op
	rec   *Record // PutRecord
	key   string
	value []byte
	ttl   time.Duration
	res   chan Result // buffered 1
	snap  bool        // metrics snapshot only
}

// NewDriver checks cfg and returns a driver; Run starts it.
func NewDriver(cfg DriverConfig) (*Driver, error) {
	if cfg.Router == nil {
		return nil, errors.New("dht: driver: no Router")
	}
	if len(cfg.Key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("dht: driver: key is %d bytes, want an ed25519 private key", len(cfg.Key))
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Driver{
		r:       cfg.Router,
		log:     log.With("component", "dht", "node", cfg.Router.ID().String()),
		reqs:    make(chan call, driverRequests),
		started: make(chan struct{}),
		stopped: make(chan struct{}),
		waiters: make(map[uint64]chan Result),
		getting: make(map[string]inFlight),
		joined:  make(map[uint64][]chan Result),
	}
	if cfg.StateDir != "" {
		d.journal = openJournal(cfg.StateDir, d.log)
		d.flushEvery = cmp.Or(cfg.FlushInterval, DefaultFlushInterval)
		d.diskOps = make(chan diskOp, 1)
	}
	d.node = New(cfg.Router.ID(), cfg.Key, cfg.Params, (*driverEnv)(d), uint64(time.Now().UnixNano()))
	return d, nil
}

// Run binds the DHT port and serves until ctx ends; it returns once the
// goroutines it started have ended and the socket is closed. Calls waiting
// when it returns fail with ErrClosed.
func (d *Driver) Run(ctx context.Context) error {
	if !d.runOnce.CompareAndSwap(false, true) {
		return errors.New("dht: driver: Run called twice")
	}
	defer close(d.stopped)
	if d.journal != nil {
		// A file that cannot be read stops the start: running empty
		// would overwrite what it holds.
		rep, err := d.journal.load(time.Now(), d.node)
		if err != nil {
			return err
		}
		d.loaded = rep
		defer d.journal.file.close()
		if err := d.journal.sync(time.Now(), d.node); err != nil {
			d.log.Error("records file not rewritten; retrying at the next flush", "err", err)
		}
	}
	conn, err := d.r.ListenPacket(Port)
	if err != nil {
		return fmt.Errorf("dht: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	in := make(chan ssr.Datagram, driverInbound)
	var wg sync.WaitGroup
	wg.Go(func() { d.read(ctx, conn, in) })
	if d.journal != nil {
		wg.Go(d.writeDisk)
	}
	defer func() {
		cancel()
		conn.Close()
		if d.journal != nil {
			close(d.diskOps)
		}
		wg.Wait()
		if d.journal != nil {
			// What changed since the last flush, written before Run
			// returns: a clean stop loses nothing.
			if d.diskFailed.Load() {
				d.journal.failed()
			}
			if err := d.journal.sync(time.Now(), d.node); err != nil {
				d.log.Error("records not written at stop", "err", err)
			}
		}
		for id, ch := range d.waiters {
			ch <- Result{ID: id, Err: ErrClosed}
			delete(d.waiters, id)
		}
		for id, chs := range d.joined {
			for _, ch := range chs {
				ch <- Result{ID: id, Err: ErrClosed}
			}
			delete(d.joined, id)
		}
		clear(d.getting)
	}()
	close(d.started)
	d.log.Info("dht starting", "port", Port)
	d.loop(ctx, in)
	return nil
}

// read hands the mesh socket's datagrams to the loop.
func (d *Driver) read(ctx context.Context, conn net.PacketConn, in chan<- ssr.Datagram) {
	buf := make([]byte, MaxMessage+1)
	for {
		n, addr, err := conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				d.log.Warn("mesh socket read failed", "err", err)
			}
			return
		}
		ua, ok := addr.(*net.UDPAddr)
		if !ok || n > MaxMessage {
			continue
		}
		src, ok := ssr.IDFromAddr(ua.AddrPort().Addr())
		if !ok {
			continue
		}
		dg := ssr.Datagram{Src: src, SrcPort: uint16(ua.Port), DstPort: Port, Payload: append([]byte(nil), buf[:n]...)}
		select {
		case in <- dg:
		case <-ctx.Done():
			return
		}
	}
}

// writeDisk carries out the journal's writes in order, beside the loop.
func (d *Driver) writeDisk() {
	failing := false
	for op := range d.diskOps {
		err := d.journal.file.do(op)
		d.diskBusy.Add(-1)
		switch {
		case err != nil:
			d.diskFailed.Store(true)
			d.diskErrors.Add(1)
			if !failing {
				d.log.Error("records not written to disk; retrying", "err", err)
			}
		case failing:
			d.log.Info("records written to disk again")
		}
		failing = err != nil
	}
}

// flush hands the changes since the last flush to the writer, unless it is
// still busy: then they wait in the store's change set (bounded) for the
// next flush.
func (d *Driver) flush() {
	if len(d.diskOps) > 0 {
		return
	}
	if d.diskFailed.Swap(false) {
		d.journal.failed()
	}
	if op, ok := d.journal.flush(time.Now(), d.node); ok {
		d.diskBusy.Add(1)
		d.diskOps <- op
	}
}

func (d *Driver) loop(ctx context.Context, in <-chan ssr.Datagram) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	var flushC <-chan time.Time
	if d.journal != nil {
		t := time.NewTicker(d.flushEvery)
		defer t.Stop()
		flushC = t.C
	}
	var armed time.Time
	d.refreshRing()
	for {
		if next := d.node.NextDeadline(); !next.Equal(armed) {
			armed = next
			timer.Reset(time.Until(next))
		}
		select {
		case <-ctx.Done():
			return
		case dg := <-in:
			d.node.HandleDatagram(time.Now(), dg)
		case c := <-d.reqs:
			d.handleCall(c)
		case <-flushC:
			d.flush()
		case <-timer.C:
			armed = time.Time{}
			// The ring view is read from the router once per RingPoll,
			// right before the Node polls it.
			now := time.Now()
			if !now.Before(d.node.nextPoll) {
				d.refreshRing()
			}
			d.node.Tick(now)
		}
	}
}

// refreshRing reads the router's successors and predecessors. It waits
// briefly for the router's mutex; the router never waits for this one.
func (d *Driver) refreshRing() {
	st := d.r.Status()
	d.succ, d.pred = d.succ[:0], d.pred[:0]
	for _, p := range st.Successors {
		if id, err := ssr.ParseNodeID(p.ID); err == nil {
			d.succ = append(d.succ, id)
		}
	}
	for _, p := range st.Predecessors {
		if id, err := ssr.ParseNodeID(p.ID); err == nil {
			d.pred = append(d.pred, id)
		}
	}
}

func (d *Driver) handleCall(c call) {
	now := time.Now()
	if c.snap {
		m := d.node.Metrics()
		if j := d.journal; j != nil {
			m.DiskLoaded, m.DiskRefused = uint64(d.loaded.Loaded), uint64(d.loaded.Refused)
			m.DiskDamaged = uint64(d.loaded.Corrupt + d.loaded.Bad)
			m.DiskBytes, m.DiskRewrites, m.DiskErrors = uint64(j.size), uint64(j.rewrites), d.diskErrors.Load()
			m.DiskPending = uint64(len(d.node.st.changes)) + uint64(d.diskBusy.Load())
			if d.node.st.overflow || j.full {
				m.DiskPending++
			}
		}
		m.GetsJoined = d.joins
		d.mu.Lock()
		d.metrics = m
		d.mu.Unlock()
		c.res <- Result{}
		return
	}
	var id uint64
	var err error
	switch c.op {
	case OpPut:
		// A get after a write asks afresh: one in flight from before the
		// write may miss it (a node reads its own writes).
		delete(d.getting, c.key)
		if c.rec != nil {
			id, err = d.node.PutRecord(now, *c.rec)
		} else {
			id, err = d.node.Put(now, c.key, c.value, c.ttl)
		}
	case OpGet:
		if recs, ok := d.node.GetOwned(now, c.key); ok {
			c.res <- Result{Op: OpGet, Key: c.key, Records: recs, Owner: d.node.ID(), Attempts: 1}
			return
		}
		if g, ok := d.getting[c.key]; ok && now.Sub(g.at) < joinWithin {
			d.joined[g.id] = append(d.joined[g.id], c.res)
			d.joins++
			return
		}
		if id, err = d.node.Get(now, c.key); err == nil {
			d.getting[c.key] = inFlight{id: id, at: now}
		}
	case OpDelete:
		delete(d.getting, c.key)
		id, err = d.node.Delete(now, c.key)
	}
	if err != nil {
		c.res <- Result{Op: c.op, Key: c.key, Err: err}
		return
	}
	d.waiters[id] = c.res
}

// do hands a call to the loop and waits for its result.
func (d *Driver) do(ctx context.Context, c call) (Result, error) {
	c.res = make(chan Result, 1)
	select {
	case <-d.stopped:
		return Result{}, ErrClosed
	default:
	}
	select {
	case d.reqs <- c:
	case <-ctx.Done():
		return Result{}, ctx.Err()
	case <-d.stopped:
		return Result{}, ErrClosed
	}
	select {
	case r := <-c.res:
		return r, r.Err
	case <-ctx.Done():
		return Result{}, ctx.Err()
	case <-d.stopped:
		select {
		case r := <-c.res:
			return r, r.Err
		default:
		}
		return Result{}, ErrClosed
	}
}

// Put stores value under key for ttl, signed by this node, and returns once
// the key's owner stored it.
func (d *Driver) Put(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	_, err := d.do(ctx, call{op: OpPut, key: key, value: append([]byte(nil), value...), ttl: ttl})
	return err
}

// PutRecord stores a record signed with another key (NewRecord), such as an
// account signed by the administrator; a tombstone record deletes.
func (d *Driver) PutRecord(ctx context.Context, r Record) error {
	_, err := d.do(ctx, call{op: OpPut, key: r.Key, rec: &r})
	return err
}

// Get returns the live records under key, one per writer (none: not found).
func (d *Driver) Get(ctx context.Context, key string) ([]Record, error) {
	r, err := d.GetResult(ctx, key)
	return r.Records, err
}

// GetResult is Get with the lookup's latency and attempts. (Its Hops is 0:
// mesh sockets do not report the hops a datagram took; the simulator,
// which drives Node directly, does.)
func (d *Driver) GetResult(ctx context.Context, key string) (Result, error) {
	return d.do(ctx, call{op: OpGet, key: key})
}

// Delete replaces this node's record under key by a tombstone.
func (d *Driver) Delete(ctx context.Context, key string) error {
	_, err := d.do(ctx, call{op: OpDelete, key: key})
	return err
}

// Metrics returns the node's counters (the last snapshot once stopped).
func (d *Driver) Metrics() Metrics {
	select {
	case <-d.started:
		_, _ = d.do(context.Background(), call{snap: true})
	default:
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.metrics
}

// driverEnv is the Node's Env; its methods run on the loop goroutine.
type driverEnv Driver

func (e *driverEnv) Send(now time.Time, target ssr.NodeID, mode ssr.Mode, payload []byte) {
	d := (*Driver)(e)
	if err := d.r.SendTo(target, mode, Port, Port, payload); err != nil && !errors.Is(err, ssr.ErrRouterClosed) {
		d.log.Debug("send failed", "target", target, "mode", mode, "err", err)
	}
}

func (e *driverEnv) Ring() (succ, pred []ssr.NodeID) { return e.succ, e.pred }

func (e *driverEnv) Complete(r Result) {
	if ch := e.waiters[r.ID]; ch != nil {
		delete(e.waiters, r.ID)
		ch <- r
	}
	if g, ok := e.getting[r.Key]; ok && g.id == r.ID {
		delete(e.getting, r.Key)
	}
	for _, ch := range e.joined[r.ID] {
		j := r
		j.Records = slices.Clone(r.Records) // each caller owns its slice
		ch <- j
	}
	delete(e.joined, r.ID)
}
