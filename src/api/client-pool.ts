/** One client per peer endpoint, made on first use and closed together. */
export class ClientPool<T extends { close(): void }> {
  private readonly clients = new Map<string, T>();

  constructor(private readonly create: (endpoint: string) => T) {}

  get(endpoint: string): T {
    let client = this.clients.get(endpoint);
    if (!client) this.clients.set(endpoint, (client = this.create(endpoint)));
    return client;
  }

  closeAll(): void {
    for (const client of this.clients.values()) client.close();
    this.clients.clear();
  }
}
