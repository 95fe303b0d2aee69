package store_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/carta-fhir/carta/store"
	"github.com/redis/go-redis/v9"
)

type state interface {
	Put(ctx context.Context, key string, val []byte, ttl time.Duration) error
	Get(ctx context.Context, key string) ([]byte, bool, error)
	Take(ctx context.Context, key string) ([]byte, bool, error)
	Add(ctx context.Context, key string, val []byte, ttl time.Duration) (bool, error)
	Incr(ctx context.Context, key string, ttl time.Duration) (int64, error)
	Del(ctx context.Context, key string) error
}

var (
	_ state = (*store.MemoryState)(nil)
	_ state = (*store.RedisState)(nil)
)

// TestState runs one contract against the in-process state and, when CARTA_TEST_REDIS_URL is set, Redis.
func TestState(t *testing.T) {
	impls := map[string]state{"memory": store.NewMemoryState()}
	if u := os.Getenv("CARTA_TEST_REDIS_URL"); u != "" {
		opt, err := redis.ParseURL(u)
		if err != nil {
			t.Fatal(err)
		}
		rdb := redis.NewClient(opt)
		defer rdb.Close()
		impls["redis"] = store.NewRedisState(rdb)
	}
	for name, st := range impls {
		t.Run(name, func(t *testing.T) {
			p := fmt.Sprintf("t%d:", time.Now().UnixNano())
			if err := st.Put(ctx, p+"a", []byte("1"), time.Minute); err != nil {
				t.Fatal(err)
			}
			if v, ok, _ := st.Get(ctx, p+"a"); !ok || string(v) != "1" {
				t.Fatalf("get: %q %v", v, ok)
			}
			// Take is one-time, even under concurrency.
			st.Put(ctx, p+"code", []byte("c"), time.Minute)
			var wg sync.WaitGroup
			var mu sync.Mutex
			got := 0
			for i := 0; i < 20; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if _, ok, err := st.Take(ctx, p+"code"); ok && err == nil {
						mu.Lock()
						got++
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			if got != 1 {
				t.Fatalf("20 concurrent takes of one code succeeded %d times", got)
			}
			// Add: first wins.
			if ok, _ := st.Add(ctx, p+"jti", []byte("x"), time.Minute); !ok {
				t.Fatal("first add refused")
			}
			if ok, _ := st.Add(ctx, p+"jti", []byte("y"), time.Minute); ok {
				t.Fatal("second add accepted")
			}
			// Counters count and expire.
			for i := 1; i <= 3; i++ {
				if n, _ := st.Incr(ctx, p+"n", 200*time.Millisecond); n != int64(i) {
					t.Fatalf("incr %d gave %d", i, n)
				}
			}
			// Expiry.
			st.Put(ctx, p+"short", []byte("s"), 100*time.Millisecond)
			time.Sleep(300 * time.Millisecond)
			if _, ok, _ := st.Get(ctx, p+"short"); ok {
				t.Fatal("expired value still there")
			}
			if n, _ := st.Incr(ctx, p+"n", time.Minute); n != 1 {
				t.Fatalf("counter did not expire: %d", n)
			}
			st.Del(ctx, p+"a")
			if _, ok, _ := st.Get(ctx, p+"a"); ok {
				t.Fatal("deleted value still there")
			}
		})
	}
}
