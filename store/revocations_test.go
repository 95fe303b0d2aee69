package store_test

import (
	"os"
	"testing"
	"time"

	"github.com/carta-fhir/carta/store"
	"github.com/carta-fhir/carta/store/storetest"
	"github.com/redis/go-redis/v9"
)

// TestRevocationsReachEveryProcess revokes a token through one Revocations and checks that a second one on the
// same store (another process, in effect) sees it: from the database on reload, and through Redis pub/sub at
// once when Redis is configured.
func TestRevocationsReachEveryProcess(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		var rdb *redis.Client
		if u := os.Getenv("CARTA_TEST_REDIS_URL"); u != "" {
			opt, err := redis.ParseURL(u)
			if err != nil {
				t.Fatal(err)
			}
			rdb = redis.NewClient(opt)
			defer rdb.Close()
		}
		one, err := store.NewRevocations(ctx, s, rdb)
		if err != nil {
			t.Fatal(err)
		}
		two, err := store.NewRevocations(ctx, s, rdb)
		if err != nil {
			t.Fatal(err)
		}
		runCtx, cancel := contextWithCancel()
		defer cancel()
		interval := 50 * time.Millisecond
		if rdb != nil {
			interval = time.Hour // only pub/sub can deliver in time
		}
		go two.Run(runCtx, interval)
		time.Sleep(100 * time.Millisecond) // let the subscription start
		jti := "jti-" + time.Now().Format("150405.000000")
		if one.Revoked(jti) || two.Revoked(jti) {
			t.Fatal("revoked before revocation")
		}
		if err := one.Revoke(ctx, jti, time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if !one.Revoked(jti) {
			t.Fatal("the revoking process does not see its revocation")
		}
		deadline := time.Now().Add(5 * time.Second)
		for !two.Revoked(jti) {
			if time.Now().After(deadline) {
				t.Fatal("the other process never saw the revocation")
			}
			time.Sleep(10 * time.Millisecond)
		}
		// A process started later loads it.
		three, err := store.NewRevocations(ctx, s, rdb)
		if err != nil {
			t.Fatal(err)
		}
		if !three.Revoked(jti) {
			t.Fatal("a new process does not load existing revocations")
		}
		// Expired revocations are dropped.
		if err := one.Revoke(ctx, "old", time.Now().Add(-time.Minute)); err != nil {
			t.Fatal(err)
		}
		four, _ := store.NewRevocations(ctx, s, nil)
		if four.Revoked("old") {
			t.Error("an expired revocation was kept")
		}
	})
}
