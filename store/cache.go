package store

import (
	"context"
	"encoding/binary"
	"hash/fnv"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/fastcache"
)

// The read cache keeps current versions of resources in memory for Read, on SQLite, where a server process is
// the only one serving its data. Consistency:
//
//   - Writes by this process invalidate what they touched (the resource, and resources whose compartment
//     they changed) after commit and before the write is acknowledged, so a client reads its own writes.
//   - A read that raced with a write never fills the cache with what it read: every key belongs to a stripe
//     whose epoch moves on each invalidation, and a fill is dropped if its stripe's epoch moved meanwhile.
//   - Writes by other processes on the same database (`carta import` while the server runs) are noticed through
//     a generation counter every write transaction increments: a gap between the counter and this process's
//     own increments empties the cache. The counter is polled every cachePoll, so another process's write is
//     seen within that time.
//
// On PostgreSQL there is no cache: replicas share the database, and a read must see what another replica
// just wrote.

const (
	cacheStripes = 256
	cachePoll    = 20 * time.Millisecond
)

// entry is one cached resource: its current row and the patients whose compartment it is in.
type entry struct {
	st       *Stored
	patients []string // for a deleted resource: the patients of its deletion record
}

// maxCachedValue bounds what one entry may take; bigger resources (large inline attachments) are read from the
// database each time.
const maxCachedValue = 60 << 10

// readCache stores entries in fastcache, whose memory is allocated in large chunks the garbage collector never
// scans: a cache of 100,000 resources costs the collector nothing.
type readCache struct {
	fc *fastcache.Cache

	// Each stripe's lock makes "check the epoch, then store" atomic with "move the epoch, then delete".
	stripes [cacheStripes]struct {
		mu    sync.Mutex
		epoch uint64
	}

	// known is the generation counter value whose effects this process knows about.
	genMu sync.Mutex
	known int64
}

func newReadCache(maxBytes int64) *readCache {
	return &readCache{fc: fastcache.New(int(maxBytes))}
}

func cacheKey(typ, id string) string { return typ + "/" + id }

func stripe(key string) int {
	h := fnv.New32a()
	h.Write([]byte(key))
	return int(h.Sum32() % cacheStripes)
}

// encode lays an entry out as rid, version, updated (8 bytes each), deleted (1), patients length (2), patients,
// raw.
func encode(e *entry) []byte {
	p := strings.Join(e.patients, " ")
	b := make([]byte, 0, 27+len(p)+len(e.st.Raw))
	b = binary.LittleEndian.AppendUint64(b, uint64(e.st.rid))
	b = binary.LittleEndian.AppendUint64(b, uint64(e.st.Version))
	b = binary.LittleEndian.AppendUint64(b, uint64(micros(e.st.Updated)))
	if e.st.Deleted {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	b = binary.LittleEndian.AppendUint16(b, uint16(len(p)))
	b = append(b, p...)
	return append(b, e.st.Raw...)
}

func decode(typ, id string, b []byte) (*entry, bool) {
	if len(b) < 27 {
		return nil, false
	}
	st := &Stored{Type: typ, ID: id,
		rid:     int64(binary.LittleEndian.Uint64(b)),
		Version: int64(binary.LittleEndian.Uint64(b[8:])),
		Updated: fromMicros(int64(binary.LittleEndian.Uint64(b[16:]))),
		Deleted: b[24] == 1,
	}
	n := int(binary.LittleEndian.Uint16(b[25:]))
	if len(b) < 27+n {
		return nil, false
	}
	e := &entry{st: st, patients: splitSpaces(string(b[27 : 27+n]))}
	if raw := b[27+n:]; len(raw) > 0 {
		st.Raw = raw
	}
	return e, true
}

func (c *readCache) get(typ, id string) (*entry, bool) {
	b, ok := c.fc.HasGet(nil, []byte(cacheKey(typ, id)))
	if !ok {
		return nil, false
	}
	return decode(typ, id, b)
}

// epoch returns the stripe epoch of key, taken before reading the database for a fill.
func (c *readCache) epoch(key string) uint64 {
	st := &c.stripes[stripe(key)]
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.epoch
}

// fill stores e unless key was invalidated since epoch was taken.
func (c *readCache) fill(key string, e *entry, epoch uint64) {
	v := encode(e)
	if len(v)+len(key) > maxCachedValue {
		return
	}
	st := &c.stripes[stripe(key)]
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.epoch == epoch {
		c.fc.Set([]byte(key), v)
	}
}

// invalidate drops the entries of keys, moving their stripes' epochs.
func (c *readCache) invalidate(keys []string) {
	for _, k := range keys {
		st := &c.stripes[stripe(k)]
		st.mu.Lock()
		st.epoch++
		c.fc.Del([]byte(k))
		st.mu.Unlock()
	}
}

// flush empties the cache.
func (c *readCache) flush() {
	for i := range c.stripes {
		c.stripes[i].mu.Lock()
	}
	for i := range c.stripes {
		c.stripes[i].epoch++
	}
	c.fc.Reset()
	for i := range c.stripes {
		c.stripes[i].mu.Unlock()
	}
}

// committed records the generation a write transaction of this process produced; a gap means another process
// wrote in between.
func (c *readCache) committed(gen int64) {
	c.genMu.Lock()
	defer c.genMu.Unlock()
	if gen != c.known+1 {
		c.flush()
	}
	if gen > c.known {
		c.known = gen
	}
}

// observe compares the database's generation with what this process knows: a higher one means another process
// wrote. (A lower one is a reading taken before this process's latest commit.)
func (c *readCache) observe(gen int64) {
	c.genMu.Lock()
	defer c.genMu.Unlock()
	if gen > c.known {
		c.flush()
		c.known = gen
	}
}

// watchGeneration polls the generation counter until ctx ends.
func (s *Store) watchGeneration(ctx context.Context) {
	t := time.NewTicker(cachePoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			var gen int64
			if err := s.genStmt.QueryRowContext(ctx).Scan(&gen); err != nil {
				if ctx.Err() == nil {
					s.cache.flush()
				}
				continue
			}
			// Writers of this process may be between their commit and recording it; hold them off.
			s.writeMu.Lock()
			s.cache.observe(gen)
			s.writeMu.Unlock()
		}
	}
}

func splitSpaces(s string) []string { return strings.Fields(s) }

// load reads a resource's current row and compartment for the cache.
func (s *Store) load(ctx context.Context, typ, id string) (*entry, error) {
	st := &Stored{Type: typ, ID: id}
	var upd, del int64
	var patients *string
	err := s.loadStmt.QueryRowContext(ctx, typ, id).Scan(&st.rid, &st.Version, &upd, &del, &st.Raw, &patients)
	if err != nil {
		return nil, err
	}
	st.Updated, st.Deleted = fromMicros(upd), del != 0
	e := &entry{st: st}
	if patients != nil {
		e.patients = splitSpaces(*patients)
	}
	if st.Deleted {
		var p string
		if err := s.db.QueryRowContext(ctx, `SELECT patients FROM history WHERE rid = ? AND version = ?`, st.rid, st.Version).Scan(&p); err != nil {
			return nil, err
		}
		e.patients = splitSpaces(p)
	}
	return e, nil
}
