package store_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/carta-fhir/carta/fhir"
	"github.com/carta-fhir/carta/store"
)

// TestCacheSeesOtherProcessesWrites opens the same SQLite database twice, as `carta serve` and `carta import` do,
// and checks that one store's cached reads catch up with the other's writes.
func TestCacheSeesOtherProcessesWrites(t *testing.T) {
	dir := t.TempDir()
	server, err := store.Open(ctx, store.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	importer, err := store.Open(ctx, store.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer importer.Close()
	if _, err := server.Update(ctx, "Patient", "x", parse(t, `{"resourceType":"Patient","id":"x","active":true}`), store.UpdateOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	if st, err := server.Read(ctx, "Patient", "x", nil); err != nil || st.Version != 1 {
		t.Fatalf("read: %v", err)
	}
	if _, err := importer.Update(ctx, "Patient", "x", parse(t, `{"resourceType":"Patient","id":"x","active":false}`), store.UpdateOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		st, err := server.Read(ctx, "Patient", "x", nil)
		if err != nil {
			t.Fatal(err)
		}
		if st.Version == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the server never saw the other process's update")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A write by this process after another process's write is noticed at once.
	if _, err := importer.Delete(ctx, "Patient", "x", store.DeleteOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := server.Update(ctx, "Patient", "y", parse(t, `{"resourceType":"Patient","id":"y"}`), store.UpdateOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := server.Read(ctx, "Patient", "x", nil); status(err) != 410 {
		t.Fatalf("after the other process deleted it: %v", err)
	}
}

// TestCacheFollowsCompartmentChanges: a Binary joins a patient's compartment when a DocumentReference points at
// it, and leaves when that DocumentReference goes; cached reads must follow.
func TestCacheFollowsCompartmentChanges(t *testing.T) {
	s, err := store.Open(ctx, store.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a := &fhir.Access{Patient: "a"}
	put := func(typ, id, body string) {
		t.Helper()
		if _, err := s.Update(ctx, typ, id, parse(t, body), store.UpdateOptions{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	put("Patient", "a", `{"resourceType":"Patient","id":"a"}`)
	put("Binary", "bin", `{"resourceType":"Binary","id":"bin","contentType":"text/plain","data":"aGk="}`)
	if _, err := s.Read(ctx, "Binary", "bin", a); status(err) != 404 {
		t.Fatalf("binary before any document: %v", err)
	}
	put("DocumentReference", "d", `{"resourceType":"DocumentReference","id":"d","status":"current","subject":{"reference":"Patient/a"},"content":[{"attachment":{"url":"Binary/bin"}}]}`)
	if _, err := s.Read(ctx, "Binary", "bin", a); err != nil {
		t.Fatalf("binary after its document: %v", err)
	}
	if _, err := s.Delete(ctx, "DocumentReference", "d", store.DeleteOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Read(ctx, "Binary", "bin", a); status(err) != 404 {
		t.Fatalf("binary after its document was deleted: %v", err)
	}
}

// TestCacheUnderConcurrentWrites reads while writing and checks that, once writers stop, every read returns the
// last version: no read that raced a write left an old version in the cache.
func TestCacheUnderConcurrentWrites(t *testing.T) {
	s, err := store.Open(ctx, store.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n = 20
	for i := 0; i < n; i++ {
		if _, err := s.Update(ctx, "Patient", fmt.Sprint("c", i), parse(t, fmt.Sprintf(`{"resourceType":"Patient","id":"c%d","name":[{"family":"V0"}]}`, i)), store.UpdateOptions{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				s.Read(ctx, "Patient", fmt.Sprint("c", i%n), nil)
			}
		}()
	}
	for v := 1; v <= 15; v++ {
		for i := 0; i < n; i++ {
			if _, err := s.Update(ctx, "Patient", fmt.Sprint("c", i), parse(t, fmt.Sprintf(`{"resourceType":"Patient","id":"c%d","name":[{"family":"V%d"}]}`, i, v)), store.UpdateOptions{}, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(stop)
	wg.Wait()
	for i := 0; i < n; i++ {
		st, err := s.Read(ctx, "Patient", fmt.Sprint("c", i), nil)
		if err != nil || st.Version != 16 || !strings.Contains(string(st.Raw), `"V15"`) {
			t.Fatalf("c%d after writes: version %d %s", i, st.Version, st.Raw)
		}
	}
}
