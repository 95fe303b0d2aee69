package auth

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/carta-fhir/carta/store"
)

// SigningAlg is the algorithm of Carta's own tokens. RS256 is what SMART requires for ID tokens, and RSA
// verification is the cheapest of the common JWS algorithms.
const SigningAlg = "RS256"

// KeyStore persists signing keys so that every replica and `carta token` sign with the same ones.
type KeyStore interface {
	SigningKeys(ctx context.Context) ([]store.SigningKey, error)
	AddSigningKey(ctx context.Context, k store.SigningKey) error
	RetireSigningKey(ctx context.Context, kid string, at time.Time) error
}

// Keys holds the server's signing key and every key still valid for verification.
type Keys struct {
	ks      KeyStore
	mu      sync.RWMutex
	signer  *rsa.PrivateKey
	kid     string
	public  map[string]crypto.PublicKey
	jwks    []byte
	reload  time.Time // last reload, to rate-limit reloads on unknown key ids
	nowFunc func() time.Time
}

// LoadKeys reads the signing keys, creating the first one when there is none.
func LoadKeys(ctx context.Context, ks KeyStore) (*Keys, error) {
	k := &Keys{ks: ks, nowFunc: time.Now}
	if err := k.load(ctx); err != nil {
		return nil, err
	}
	if k.signer == nil {
		if err := k.Rotate(ctx); err != nil {
			return nil, err
		}
	}
	return k, nil
}

func (k *Keys) load(ctx context.Context) error {
	stored, err := k.ks.SigningKeys(ctx)
	if err != nil {
		return err
	}
	public := map[string]crypto.PublicKey{}
	var signer *rsa.PrivateKey
	var kid string
	set := jwkset.NewMemoryStorage()
	for _, sk := range stored {
		block, _ := pem.Decode([]byte(sk.PrivatePEM))
		if block == nil {
			return fmt.Errorf("auth: signing key %s is not PEM", sk.KID)
		}
		priv, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return fmt.Errorf("auth: signing key %s: %w", sk.KID, err)
		}
		rk, ok := priv.(*rsa.PrivateKey)
		if !ok {
			return fmt.Errorf("auth: signing key %s is not an RSA key", sk.KID)
		}
		public[sk.KID] = &rk.PublicKey
		if sk.Retired == 0 && signer == nil {
			signer, kid = rk, sk.KID
		}
		jwk, err := jwkset.NewJWKFromKey(&rk.PublicKey, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: sk.KID, ALG: jwkset.AlgRS256, USE: jwkset.UseSig}})
		if err != nil {
			return fmt.Errorf("auth: publishing key %s: %w", sk.KID, err)
		}
		if err := set.KeyWrite(ctx, jwk); err != nil {
			return err
		}
	}
	jwks, err := set.JSONPublic(ctx)
	if err != nil {
		return fmt.Errorf("auth: building JWKS: %w", err)
	}
	k.mu.Lock()
	k.public, k.signer, k.kid, k.jwks, k.reload = public, signer, kid, jwks, k.nowFunc()
	k.mu.Unlock()
	return nil
}

// Rotate creates a new signing key. Tokens signed with older keys stay valid until they expire, because the old
// keys remain published.
func (k *Keys) Rotate(ctx context.Context) error {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("auth: generating a signing key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(pubDER)
	kid := base64.RawURLEncoding.EncodeToString(sum[:16])
	k.mu.RLock()
	old := k.kid
	k.mu.RUnlock()
	err = k.ks.AddSigningKey(ctx, store.SigningKey{KID: kid, Alg: SigningAlg, Created: k.nowFunc().UnixNano(),
		PrivatePEM: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))})
	if err != nil && !errors.Is(err, store.ErrExists) {
		return err
	}
	if old != "" {
		if err := k.ks.RetireSigningKey(ctx, old, k.nowFunc()); err != nil {
			return err
		}
	}
	return k.load(ctx)
}

// JWKS returns the public keys as a JSON Web Key Set.
func (k *Keys) JWKS() []byte {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.jwks
}

// KID returns the id of the current signing key.
func (k *Keys) KID() string {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.kid
}

// publicKey returns the verification key for kid, reloading from the store (at most every 10 s) when another
// replica may have rotated.
func (k *Keys) publicKey(ctx context.Context, kid string) (crypto.PublicKey, bool) {
	k.mu.RLock()
	pk, ok := k.public[kid]
	last := k.reload
	k.mu.RUnlock()
	if ok || k.nowFunc().Sub(last) < 10*time.Second {
		return pk, ok
	}
	if err := k.load(ctx); err != nil {
		return nil, false
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	pk, ok = k.public[kid]
	return pk, ok
}

func (k *Keys) signingKey() (*rsa.PrivateKey, string) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.signer, k.kid
}
