// The node's HTTP endpoints the console calls (same origin).

/** An error answer of the HTTP API: `{"error": {code, status, message}}`. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(`${code}: ${message}`);
  }
}

export async function call<T>(method: string, path: string, key?: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = {};
  if (key !== undefined) headers.authorization = `Bearer ${key}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const json = (await res.json().catch(() => null)) as { error?: { code: string; message: string } } | null;
  if (!res.ok) {
    throw new HttpError(res.status, json?.error?.code ?? `HTTP_${res.status}`, json?.error?.message ?? res.statusText);
  }
  return json as T;
}

/** A demo app token for `uid` (demo mode only: 404 NOT_FOUND with real apps). */
export async function demoToken(uid: string): Promise<string> {
  const r = await call<{ token: string }>("POST", "/console/token", undefined, { uid });
  return r.token;
}
