// A real OpenID Connect provider on loopback for the e2e tier: npm `oidc-provider` (panva's
// certified implementation) with its development sign-in screens (any account name; the
// password is not checked) and one confidential client, the blueprint under test.
//
//   OIDC_PORT=4901 OIDC_CLIENT_ID=… OIDC_CLIENT_SECRET=… OIDC_REDIRECT_URL=… node provider.mjs
//
// It prints `oidc-provider: ready <issuer>` once it listens. Accounts are their own name: the
// account `user_dev.local_alice` signs in as the SLICES user of that id (the ID token's `sub`).
import Provider from 'oidc-provider';

const need = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`oidc-provider: ${name} is not set`);
    process.exit(2);
  }
  return value;
};

const port = Number(need('OIDC_PORT'));
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: need('OIDC_CLIENT_ID'),
      client_secret: need('OIDC_CLIENT_SECRET'),
      redirect_uris: [need('OIDC_REDIRECT_URL')],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  // PKCE for every client, S256 only (RFC 7636); the blueprint always sends it.
  pkce: { required: () => true },
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email'],
  },
  // The ID token carries the profile claims (the blueprint reads no userinfo).
  conformIdTokenClaims: false,
  async findAccount(_ctx, id) {
    const short = id.split('_').pop();
    return {
      accountId: id,
      async claims() {
        return { sub: id, name: `${short} (oidc)`, preferred_username: short, email: `${short}@oidc.local` };
      },
    };
  },
  features: { devInteractions: { enabled: true } },
  ttl: { AuthorizationCode: 60, AccessToken: 600, IdToken: 600, Interaction: 600, Session: 3600, Grant: 3600 },
  cookies: { keys: ['e2e-only-cookie-signing-key'] },
});
provider.proxy = false;

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider: ready ${issuer}`);
});
