package store

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"
)

// Group commit for SQLite. A commit's cost is mostly fixed (one WAL frame and two system calls per page the
// transaction changed), so writes that arrive together are committed together: a single committer goroutine takes
// every queued write, runs each inside a savepoint of one database transaction, and commits once. A write that
// fails rolls back to its savepoint and fails alone. Each caller is answered after the commit, so an
// acknowledged write is as durable as with one transaction per write; nothing waits for company, and a write
// that arrives alone commits alone.

// maxBatch bounds how many writes share a commit.
const maxBatch = 64

// job is a write waiting for the committer.
type job struct {
	ctx  context.Context
	fn   func(*Tx) error
	done chan error
	// solo jobs are committed in a batch of their own.
	solo bool
}

var errClosed = errors.New("store: closed")

func (s *Store) startCommitter() {
	s.jobs = make(chan *job, 256)
	s.closing = make(chan struct{})
	s.committerDone = make(chan struct{})
	go s.committer()
}

func (s *Store) enqueue(ctx context.Context, fn func(*Tx) error, solo bool) error {
	j := &job{ctx: ctx, fn: fn, done: make(chan error, 1), solo: solo}
	select {
	case s.jobs <- j:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.closing:
		return errClosed
	}
	return <-j.done
}

func (s *Store) committer() {
	defer close(s.committerDone)
	var pending *job // a solo job met while filling a batch, kept for the next one
	for {
		var first *job
		if pending != nil {
			first, pending = pending, nil
		} else {
			select {
			case first = <-s.jobs:
			case <-s.closing:
				s.drainClosed()
				return
			}
		}
		batch := []*job{first}
		if !first.solo {
			// Let writers that are already running reach the queue first: on a busy server this fills the
			// batch; on an idle one it costs a scheduler round.
			runtime.Gosched()
		drain:
			for len(batch) < maxBatch {
				select {
				case j := <-s.jobs:
					if j.solo {
						pending = j
						break drain
					}
					batch = append(batch, j)
				default:
					break drain
				}
			}
		}
		s.runBatch(batch)
	}
}

func (s *Store) drainClosed() {
	for {
		select {
		case j := <-s.jobs:
			j.done <- errClosed
		default:
			return
		}
	}
}

// runBatch runs queued writes in one transaction.
func (s *Store) runBatch(batch []*job) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	ctx := context.Background()
	fail := func(err error) {
		for _, j := range batch {
			j.done <- err
		}
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		fail(s.dbErr("starting a transaction", err))
		return
	}
	var gen int64
	if s.cache != nil {
		// Every write transaction moves the generation, so that other processes' caches notice it.
		if err := tx.QueryRowContext(ctx, `UPDATE carta_generation SET n = n + 1 WHERE id = 1 RETURNING n`).Scan(&gen); err != nil {
			tx.Rollback()
			fail(s.dbErr("starting a transaction", err))
			return
		}
	}
	results := make([]error, len(batch))
	done := make([]*Tx, 0, len(batch))
	for i, j := range batch {
		if err := j.ctx.Err(); err != nil {
			results[i] = err
			continue
		}
		// A job alone in its batch needs no savepoint: if it fails, the whole transaction goes. (A savepoint
		// would make SQLite keep a statement journal that costs time in proportion to everything the job wrote
		// so far, at every statement.)
		shared := len(batch) > 1
		if shared {
			if _, err := tx.ExecContext(ctx, `SAVEPOINT w`); err != nil {
				results[i] = s.dbErr("starting a write", err)
				continue
			}
		}
		// Statements run without the request's cancellation: interrupting SQLite mid-statement would roll back
		// the whole shared transaction.
		t := &Tx{s: s, tx: tx, ctx: context.WithoutCancel(j.ctx), now: s.now().UTC().Truncate(time.Millisecond)}
		err := runJob(t, j.fn)
		if !shared {
			if err != nil {
				tx.Rollback()
				results[i] = err
				s.answer(batch, results)
				return
			}
			done = append(done, t)
			continue
		}
		if err != nil {
			if _, rerr := tx.ExecContext(ctx, `ROLLBACK TO w`); rerr != nil {
				// The transaction is unusable: undo everything.
				tx.Rollback()
				results[i] = err
				for k := range batch {
					if results[k] == nil {
						results[k] = s.dbErr("rolling back", rerr)
					}
				}
				s.answer(batch, results)
				return
			}
			results[i] = err
		}
		if _, err := tx.ExecContext(ctx, `RELEASE w`); err != nil {
			tx.Rollback()
			for k := range batch {
				if results[k] == nil {
					results[k] = s.dbErr("writing", err)
				}
			}
			s.answer(batch, results)
			return
		}
		if results[i] == nil {
			done = append(done, t)
		}
	}
	if len(done) == 0 {
		tx.Rollback()
		s.answer(batch, results)
		return
	}
	if err := tx.Commit(); err != nil {
		if s.cache != nil {
			s.cache.flush()
		}
		for k := range batch {
			if results[k] == nil {
				results[k] = s.dbErr("committing", err)
			}
		}
		s.answer(batch, results)
		return
	}
	if s.cache != nil {
		var keys []string
		for _, t := range done {
			keys = append(keys, t.touched...)
		}
		s.cache.invalidate(keys)
		s.cache.committed(gen)
	}
	s.answer(batch, results)
}

func (s *Store) answer(batch []*job, results []error) {
	for i, j := range batch {
		j.done <- results[i]
	}
}

// runJob runs one write, turning a panic into that write's error so the committer survives it.
func runJob(t *Tx, fn func(*Tx) error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("store: panic in a write: %v", v)
		}
	}()
	return fn(t)
}
