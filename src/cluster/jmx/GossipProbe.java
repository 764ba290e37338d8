import java.io.BufferedReader;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.InputStreamReader;
import java.io.OutputStreamWriter;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import javax.management.Attribute;
import javax.management.AttributeList;
import javax.management.MBeanServerConnection;
import javax.management.ObjectName;
import javax.management.remote.JMXConnector;
import javax.management.remote.JMXConnectorFactory;
import javax.management.remote.JMXServiceURL;

/**
 * Cassandra's gossip view of the ring, read over JMX from one (the local) node and printed as one JSON line
 * per poll on stdout, for the agent (src/cluster/jmx-gossip.ts). JDK only; one JMX connection kept open and
 * re-opened when it fails.
 *
 * Usage: java GossipProbe HOST PORT INTERVAL_MS
 *
 * Lines: {"type":"hello",...} once, then per poll either {"type":"view",...} or {"type":"error",...}. A poll
 * runs on a worker thread: while the node does not answer (a hung JVM accepts connections but never replies),
 * the main thread prints {"type":"waiting","stage":...,"ms":...} every interval, so silence always means the
 * probe itself is stuck. A "poll" line on stdin polls at once; end of stdin (the agent is gone) ends the probe.
 */
public final class GossipProbe {
  private static final String STORAGE_SERVICE = "org.apache.cassandra.db:type=StorageService";
  private static final String SNITCH_INFO = "org.apache.cassandra.db:type=EndpointSnitchInfo";
  /** Cassandra 4 names the endpoint → host id map EndpointToHostId (HostIdMap is deprecated there); 2.1 has only HostIdMap. */
  private static final String[] HOST_ID_ATTRIBUTES = {"EndpointToHostId", "HostIdMap"};
  private static final String[] LIST_ATTRIBUTES = {"LiveNodes", "UnreachableNodes", "JoiningNodes", "LeavingNodes", "MovingNodes"};
  /** Racks and data centers almost never change: asked for new endpoints, and again every this many polls. */
  private static final int TOPOLOGY_REFRESH_POLLS = 60;

  private static long responseTimeoutMs;
  private final String host;
  private final int port;
  private final long intervalMs;
  private final PrintWriter out =
      new PrintWriter(new OutputStreamWriter(new FileOutputStream(FileDescriptor.out), StandardCharsets.UTF_8), false);

  private JMXConnector connector;
  /** Set and cleared by the worker thread; read by the main thread only to name the stage of a timeout. */
  private volatile MBeanServerConnection connection;
  private String hostIdAttribute;
  private final Map<String, String> racks = new HashMap<>();
  private final Map<String, String> datacenters = new HashMap<>();
  private long polls;

  private GossipProbe(String host, int port, long intervalMs) {
    this.host = host;
    this.port = port;
    this.intervalMs = intervalMs;
  }

  public static void main(String[] args) throws Exception {
    if (args.length != 3) {
      System.err.println("usage: java GossipProbe HOST PORT INTERVAL_MS");
      System.exit(2);
    }
    long interval = Long.parseLong(args[2]);
    // Without a read timeout an RMI call to a SIGSTOPped JVM waits forever (its kernel still accepts connections).
    responseTimeoutMs = Math.max(2000, 3 * interval);
    System.setProperty("sun.rmi.transport.tcp.responseTimeout", String.valueOf(responseTimeoutMs));
    new GossipProbe(args[0], Integer.parseInt(args[1]), interval).run();
  }

  private void run() throws InterruptedException {
    LinkedBlockingQueue<Boolean> requests = new LinkedBlockingQueue<>();
    Thread stdin = new Thread(() -> readRequests(requests), "stdin");
    stdin.setDaemon(true);
    stdin.start();
    ExecutorService worker = Executors.newSingleThreadExecutor(r -> {
      Thread t = new Thread(r, "jmx");
      t.setDaemon(true);
      return t;
    });
    emit("{\"type\":\"hello\",\"jmx\":" + quote(host + ":" + port) + ",\"intervalMs\":" + intervalMs + "}");
    Future<String> pending = null;
    long pendingSince = 0;
    for (;;) {
      long started = System.currentTimeMillis();
      if (pending == null) {
        pending = worker.submit(this::pollOnce);
        pendingSince = started;
      }
      try {
        emit(pending.get(intervalMs, TimeUnit.MILLISECONDS));
        pending = null;
      } catch (TimeoutException e) {
        // Keep waiting for this poll (it ends with the RMI response timeout at the latest); say so meanwhile.
        emit("{\"type\":\"waiting\",\"stage\":" + quote(connection == null ? "connect" : "poll")
            + ",\"ms\":" + (System.currentTimeMillis() - pendingSince) + "}");
      } catch (ExecutionException e) {
        Throwable cause = e.getCause();
        String stage = cause instanceof StageException ? ((StageException) cause).stage : "poll";
        Throwable why = cause instanceof StageException ? cause.getCause() : cause;
        String hung = timedOut(why) ? "no answer from JMX within " + responseTimeoutMs + " ms (is the node hung?): " : "";
        emit(error(stage, hung + describe(why)));
        pending = null;
      }
      long wait = intervalMs - (System.currentTimeMillis() - started);
      if (wait > 0 && requests.poll(wait, TimeUnit.MILLISECONDS) != null) requests.clear();
    }
  }

  private void readRequests(LinkedBlockingQueue<Boolean> requests) {
    try (BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
      String line;
      while ((line = in.readLine()) != null) {
        if (line.trim().equals("poll")) requests.offer(Boolean.TRUE);
      }
    } catch (Exception e) {
      // Treated as end of input.
    }
    System.exit(0);
  }

  private static final class StageException extends Exception {
    private static final long serialVersionUID = 1L;
    final String stage;

    StageException(String stage, Throwable cause) {
      super(cause);
      this.stage = stage;
    }
  }

  private String pollOnce() throws StageException {
    long started = System.nanoTime();
    if (connection == null) {
      try {
        JMXServiceURL url = new JMXServiceURL("service:jmx:rmi:///jndi/rmi://" + host + ":" + port + "/jmxrmi");
        Map<String, Object> env = new HashMap<>();
        // We poll ourselves; the connector's own connection checker would only add wake-ups.
        env.put("jmx.remote.x.client.connection.check.period", 0L);
        connector = JMXConnectorFactory.connect(url, env);
        connection = connector.getMBeanServerConnection();
      } catch (Exception e) {
        disconnect();
        throw new StageException("connect", e);
      }
    }
    try {
      ObjectName storage = new ObjectName(STORAGE_SERVICE);
      List<String> names = new ArrayList<>(List.of(LIST_ATTRIBUTES));
      if (hostIdAttribute == null) names.addAll(List.of(HOST_ID_ATTRIBUTES)); else names.add(hostIdAttribute);
      // One round trip; attributes a version lacks are left out of the answer rather than failing it.
      AttributeList answer = connection.getAttributes(storage, names.toArray(new String[0]));
      Map<String, Object> values = new HashMap<>();
      for (Attribute a : answer.asList()) values.put(a.getName(), a.getValue());
      for (String name : LIST_ATTRIBUTES) {
        if (!values.containsKey(name)) throw new IllegalStateException(STORAGE_SERVICE + " has no attribute " + name);
      }
      Map<?, ?> hostIds = null;
      for (String name : HOST_ID_ATTRIBUTES) {
        if (values.get(name) instanceof Map) {
          hostIds = (Map<?, ?>) values.get(name);
          hostIdAttribute = name;
          break;
        }
      }
      if (hostIds == null) throw new IllegalStateException(STORAGE_SERVICE + " has neither EndpointToHostId nor HostIdMap");
      polls++;
      TreeSet<String> endpoints = new TreeSet<>();
      for (String name : LIST_ATTRIBUTES) endpoints.addAll(strings(values.get(name)));
      for (Object k : hostIds.keySet()) endpoints.add(String.valueOf(k));
      readTopology(endpoints);
      StringBuilder line = new StringBuilder(512).append("{\"type\":\"view\",\"seq\":").append(polls);
      for (String name : LIST_ATTRIBUTES) {
        line.append(',').append(quote(lowerFirst(name.substring(0, name.length() - "Nodes".length())))).append(':');
        appendArray(line, strings(values.get(name)));
      }
      line.append(",\"hostIds\":");
      appendObject(line, hostIds);
      line.append(",\"racks\":");
      appendObject(line, racks);
      line.append(",\"datacenters\":");
      appendObject(line, datacenters);
      line.append(",\"pollMs\":").append((System.nanoTime() - started) / 1_000_000).append('}');
      return line.toString();
    } catch (Exception e) {
      disconnect();
      throw new StageException("poll", e);
    }
  }

  /** Rack and data center of each endpoint through the snitch; missing ones are simply left out. */
  private void readTopology(Collection<String> endpoints) {
    if (polls % TOPOLOGY_REFRESH_POLLS == 1) {
      racks.clear();
      datacenters.clear();
    }
    try {
      ObjectName snitch = new ObjectName(SNITCH_INFO);
      String[] signature = {String.class.getName()};
      for (String ep : endpoints) {
        if (racks.containsKey(ep) && datacenters.containsKey(ep)) continue;
        racks.put(ep, String.valueOf(connection.invoke(snitch, "getRack", new Object[] {ep}, signature)));
        datacenters.put(ep, String.valueOf(connection.invoke(snitch, "getDatacenter", new Object[] {ep}, signature)));
      }
    } catch (Exception e) {
      // Topology is a nicety: the view stands without it.
    }
  }

  private void disconnect() {
    JMXConnector c = connector;
    connector = null;
    connection = null;
    if (c != null) {
      try {
        c.close();
      } catch (Exception e) {
        // Already broken.
      }
    }
  }

  private void emit(String line) {
    out.print(line);
    out.print('\n');
    out.flush();
    if (out.checkError()) System.exit(0); // stdout closed: the agent is gone.
  }

  private static String error(String stage, String message) {
    return "{\"type\":\"error\",\"stage\":" + quote(stage) + ",\"message\":" + quote(message) + "}";
  }

  private static boolean timedOut(Throwable t) {
    for (int depth = 0; t != null && depth < 10; t = t.getCause(), depth++) {
      if (t instanceof java.net.SocketTimeoutException) return true;
    }
    return false;
  }

  /** The exception chain, outermost first, without repeating messages. */
  private static String describe(Throwable t) {
    StringBuilder sb = new StringBuilder();
    String last = null;
    for (int depth = 0; t != null && depth < 6; t = t.getCause(), depth++) {
      String msg = t.getClass().getName() + (t.getMessage() == null ? "" : ": " + t.getMessage());
      if (last != null && last.contains(msg)) continue;
      if (sb.length() > 0) sb.append(" <- ");
      sb.append(msg);
      last = msg;
    }
    return sb.toString();
  }

  private static List<String> strings(Object value) {
    List<String> result = new ArrayList<>();
    if (value instanceof Collection) for (Object o : (Collection<?>) value) result.add(String.valueOf(o));
    else if (value instanceof Object[]) for (Object o : (Object[]) value) result.add(String.valueOf(o));
    return result;
  }

  private static String lowerFirst(String s) {
    return Character.toLowerCase(s.charAt(0)) + s.substring(1);
  }

  private static void appendArray(StringBuilder sb, List<String> values) {
    sb.append('[');
    for (int i = 0; i < values.size(); i++) {
      if (i > 0) sb.append(',');
      sb.append(quote(values.get(i)));
    }
    sb.append(']');
  }

  private static void appendObject(StringBuilder sb, Map<?, ?> map) {
    sb.append('{');
    boolean first = true;
    for (Map.Entry<?, ?> e : map.entrySet()) {
      if (!first) sb.append(',');
      first = false;
      sb.append(quote(String.valueOf(e.getKey()))).append(':').append(quote(String.valueOf(e.getValue())));
    }
    sb.append('}');
  }

  private static String quote(String s) {
    StringBuilder sb = new StringBuilder(s.length() + 2).append('"');
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      switch (c) {
        case '"': sb.append("\\\""); break;
        case '\\': sb.append("\\\\"); break;
        case '\n': sb.append("\\n"); break;
        case '\r': sb.append("\\r"); break;
        case '\t': sb.append("\\t"); break;
        default:
          if (c < 0x20) sb.append(String.format("\\u%04x", (int) c)); else sb.append(c);
      }
    }
    return sb.append('"').toString();
  }
}
