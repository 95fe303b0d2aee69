package store

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Revocations is the set of revoked access-token ids, kept in memory so that checking a token costs a map lookup.
// The database is the record; with Redis, revocations reach every replica at once through pub/sub, and without
// it every process sharing the database reloads the set every few seconds.
type Revocations struct {
	s   *Store
	rdb *redis.Client

	mu  sync.RWMutex
	set map[string]time.Time
}

const (
	redisRevokedPrefix  = "carta:revoked:"
	redisRevokedChannel = "carta:revocations"
)

// NewRevocations loads the current revocations. rdb may be nil.
func NewRevocations(ctx context.Context, s *Store, rdb *redis.Client) (*Revocations, error) {
	r := &Revocations{s: s, rdb: rdb, set: map[string]time.Time{}}
	if err := r.reload(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Revocations) reload(ctx context.Context) error {
	fromDB, err := r.s.Revoked(ctx)
	if err != nil {
		return err
	}
	if r.rdb != nil {
		iter := r.rdb.Scan(ctx, 0, redisRevokedPrefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			jti := strings.TrimPrefix(iter.Val(), redisRevokedPrefix)
			if _, ok := fromDB[jti]; !ok {
				fromDB[jti] = time.Now().Add(time.Hour) // expiry unknown here; the key's own TTL ends it in Redis
			}
		}
		if err := iter.Err(); err != nil {
			return fmt.Errorf("store: reading revocations from Redis: %w", err)
		}
	}
	r.mu.Lock()
	for jti, exp := range r.set { // keep entries added through pub/sub since the last reload
		if _, ok := fromDB[jti]; !ok && exp.After(time.Now()) {
			fromDB[jti] = exp
		}
	}
	r.set = fromDB
	r.mu.Unlock()
	return nil
}

// Revoke records that the token jti (expiring at exp) is no longer valid, everywhere.
func (r *Revocations) Revoke(ctx context.Context, jti string, exp time.Time) error {
	if err := r.s.Revoke(ctx, jti, exp); err != nil {
		return err
	}
	r.add(jti, exp)
	if r.rdb != nil {
		ttl := time.Until(exp) + time.Minute
		if ttl < time.Minute {
			ttl = time.Minute
		}
		if err := r.rdb.Set(ctx, redisRevokedPrefix+jti, exp.Unix(), ttl).Err(); err != nil {
			return fmt.Errorf("store: revoking in Redis: %w", err)
		}
		if err := r.rdb.Publish(ctx, redisRevokedChannel, jti+" "+strconv.FormatInt(exp.Unix(), 10)).Err(); err != nil {
			return fmt.Errorf("store: announcing revocation: %w", err)
		}
	}
	return nil
}

func (r *Revocations) add(jti string, exp time.Time) {
	r.mu.Lock()
	r.set[jti] = exp
	r.mu.Unlock()
}

// Revoked reports whether jti was revoked.
func (r *Revocations) Revoked(jti string) bool {
	r.mu.RLock()
	_, ok := r.set[jti]
	r.mu.RUnlock()
	return ok
}

// Run keeps the set current until ctx ends: it follows Redis announcements when Redis is configured and reloads
// from the database every interval (which also drops expired entries).
func (r *Revocations) Run(ctx context.Context, interval time.Duration) {
	if r.rdb != nil {
		sub := r.rdb.Subscribe(ctx, redisRevokedChannel)
		defer sub.Close()
		ch := sub.Channel()
		go func() {
			for msg := range ch {
				jti, exp, _ := strings.Cut(msg.Payload, " ")
				sec, err := strconv.ParseInt(exp, 10, 64)
				if err != nil {
					continue
				}
				r.add(jti, time.Unix(sec, 0))
			}
		}()
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := r.reload(ctx); err != nil && ctx.Err() == nil {
				r.s.log.Warn("reloading token revocations failed", "err", err)
			}
		}
	}
}
