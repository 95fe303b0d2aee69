package store

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Short-lived shared state of the authorization server: one-time authorization codes, login sessions, used client
// assertion ids, login attempt counters. MemoryState keeps it in this process (one server); RedisState keeps it in
// Redis, so that any replica can continue what another began. Both pass the same tests (state_test.go).

// MemoryState is in-process short-lived state. It is safe for concurrent use.
type MemoryState struct {
	mu    sync.Mutex
	items map[string]stateItem
	now   func() time.Time
	ops   int
}

type stateItem struct {
	val     []byte
	n       int64
	expires time.Time
}

// NewMemoryState returns an empty in-process state.
func NewMemoryState() *MemoryState {
	return &MemoryState{items: map[string]stateItem{}, now: time.Now}
}

// get returns a live item; the caller holds mu.
func (m *MemoryState) get(key string) (stateItem, bool) {
	it, ok := m.items[key]
	if ok && !m.now().Before(it.expires) {
		delete(m.items, key)
		return stateItem{}, false
	}
	return it, ok
}

// sweep drops expired items now and then, so abandoned keys do not pile up; the caller holds mu.
func (m *MemoryState) sweep() {
	m.ops++
	if m.ops%1024 != 0 {
		return
	}
	now := m.now()
	for k, it := range m.items {
		if !now.Before(it.expires) {
			delete(m.items, k)
		}
	}
}

// Put stores val under key for ttl.
func (m *MemoryState) Put(_ context.Context, key string, val []byte, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweep()
	m.items[key] = stateItem{val: append([]byte(nil), val...), expires: m.now().Add(ttl)}
	return nil
}

// Get returns the value under key.
func (m *MemoryState) Get(_ context.Context, key string) ([]byte, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	it, ok := m.get(key)
	return it.val, ok, nil
}

// Take returns the value under key and removes it: of concurrent Takes, one gets it.
func (m *MemoryState) Take(_ context.Context, key string) ([]byte, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	it, ok := m.get(key)
	if ok {
		delete(m.items, key)
	}
	return it.val, ok, nil
}

// Add stores val under key unless the key is present, and reports whether it stored it.
func (m *MemoryState) Add(_ context.Context, key string, val []byte, ttl time.Duration) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweep()
	if _, ok := m.get(key); ok {
		return false, nil
	}
	m.items[key] = stateItem{val: append([]byte(nil), val...), expires: m.now().Add(ttl)}
	return true, nil
}

// Incr adds one to the counter under key and returns it; a new counter lives for ttl.
func (m *MemoryState) Incr(_ context.Context, key string, ttl time.Duration) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweep()
	it, ok := m.get(key)
	if !ok {
		it = stateItem{expires: m.now().Add(ttl)}
	}
	it.n++
	it.val = []byte(strconv.FormatInt(it.n, 10)) // Get reads a counter as Redis does
	m.items[key] = it
	return it.n, nil
}

// Del removes key.
func (m *MemoryState) Del(_ context.Context, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.items, key)
	return nil
}

// RedisState is short-lived state in Redis, shared by every replica.
type RedisState struct {
	rdb    *redis.Client
	prefix string
}

// NewRedisState uses rdb for state, under keys starting "carta:state:".
func NewRedisState(rdb *redis.Client) *RedisState {
	return &RedisState{rdb: rdb, prefix: "carta:state:"}
}

// Namespace returns a state whose keys are apart from r's (tests share one Redis).
func (r *RedisState) Namespace(name string) *RedisState {
	return &RedisState{rdb: r.rdb, prefix: r.prefix + name + ":"}
}

// Put stores val under key for ttl.
func (r *RedisState) Put(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	return r.rdb.Set(ctx, r.prefix+key, val, ttl).Err()
}

// Get returns the value under key.
func (r *RedisState) Get(ctx context.Context, key string) ([]byte, bool, error) {
	b, err := r.rdb.Get(ctx, r.prefix+key).Bytes()
	if err == redis.Nil {
		return nil, false, nil
	}
	return b, err == nil, err
}

// Take returns the value under key and removes it (GETDEL: of concurrent Takes, one gets it).
func (r *RedisState) Take(ctx context.Context, key string) ([]byte, bool, error) {
	b, err := r.rdb.GetDel(ctx, r.prefix+key).Bytes()
	if err == redis.Nil {
		return nil, false, nil
	}
	return b, err == nil, err
}

// Add stores val under key unless the key is present (SET NX), and reports whether it stored it.
func (r *RedisState) Add(ctx context.Context, key string, val []byte, ttl time.Duration) (bool, error) {
	res, err := r.rdb.SetArgs(ctx, r.prefix+key, val, redis.SetArgs{Mode: "NX", TTL: ttl}).Result()
	if err == redis.Nil {
		return false, nil
	}
	return res == "OK", err
}

var incrScript = redis.NewScript(`local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n`)

// Incr adds one to the counter under key and returns it; a new counter lives for ttl.
func (r *RedisState) Incr(ctx context.Context, key string, ttl time.Duration) (int64, error) {
	return incrScript.Run(ctx, r.rdb, []string{r.prefix + key}, ttl.Milliseconds()).Int64()
}

// Del removes key.
func (r *RedisState) Del(ctx context.Context, key string) error {
	return r.rdb.Del(ctx, r.prefix+key).Err()
}
