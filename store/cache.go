package store

import (
	"context"
	"hash/fnv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
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
	size     int64
}

type readCache struct {
	max int64

	mu    sync.RWMutex
	m     map[string]*entry
	byRID map[int64]string
	size  int64

	epochs [cacheStripes]atomic.Uint64

	// known is the generation counter value whose effects this process knows about.
	genMu sync.Mutex
	known int64
}

func newReadCache(maxBytes int64) *readCache {
	return &readCache{max: maxBytes, m: map[string]*entry{}, byRID: map[int64]string{}}
}

func cacheKey(typ, id string) string { return typ + "/" + id }

func stripe(key string) int {
	h := fnv.New32a()
	h.Write([]byte(key))
	return int(h.Sum32() % cacheStripes)
}

func (c *readCache) get(key string) (*entry, bool) {
	c.mu.RLock()
	e, ok := c.m[key]
	c.mu.RUnlock()
	return e, ok
}

// epoch returns the stripe epoch of key, taken before reading the database for a fill.
func (c *readCache) epoch(key string) uint64 { return c.epochs[stripe(key)].Load() }

// fill stores e unless key was invalidated since epoch was taken.
func (c *readCache) fill(key string, e *entry, epoch uint64) {
	e.size = int64(len(e.st.Raw) + len(key) + 128)
	if e.size > c.max/16 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.epochs[stripe(key)].Load() != epoch {
		return
	}
	if old, ok := c.m[key]; ok {
		c.size -= old.size
	}
	c.m[key] = e
	c.byRID[e.st.rid] = key
	c.size += e.size
	// Evict arbitrary entries (map order is random) until within budget.
	for k, v := range c.m {
		if c.size <= c.max {
			break
		}
		if k == key {
			continue
		}
		delete(c.m, k)
		delete(c.byRID, v.st.rid)
		c.size -= v.size
	}
}

// invalidate drops the entries of resources (by rid) and keys, moving their stripes' epochs.
func (c *readCache) invalidate(keys []string, rids []int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rid := range rids {
		if k, ok := c.byRID[rid]; ok {
			keys = append(keys, k)
		}
	}
	for _, k := range keys {
		c.epochs[stripe(k)].Add(1)
		if e, ok := c.m[k]; ok {
			delete(c.m, k)
			delete(c.byRID, e.st.rid)
			c.size -= e.size
		}
	}
}

// flush empties the cache.
func (c *readCache) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.epochs {
		c.epochs[i].Add(1)
	}
	c.m = map[string]*entry{}
	c.byRID = map[int64]string{}
	c.size = 0
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
