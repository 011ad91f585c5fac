//! Test and benchmark support shared by the workspace's tests: a local Lambda Runtime API and a
//! checker of CloudWatch Embedded Metric Format output.

pub mod batch_stand_in;
pub mod emf;

pub mod runtime_api {
    //! A minimal Lambda Runtime API: enough for `lambda_runtime` to initialise, take one event and
    //! post its answer. Every request the function makes is reported on the returned channel as
    //! (path, body), `invocation/next` included (with an empty body), so callers can time init.

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    pub const REQUEST_ID: &str = "8476a536-e9f4-11e8-9739-2dfe598c3fcd";

    /// Serves one invocation of `event` on a free loopback port (returned as `host:port`), then
    /// holds further `next` calls open.
    pub async fn serve(event: String) -> (String, mpsc::Receiver<(String, String)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (posted, received) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut served = false;
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (event, posted) = (event.clone(), posted.clone());
                let first = !served;
                served = true;
                tokio::spawn(connection(stream, event, posted, first));
            }
        });
        (address, received)
    }

    async fn connection(
        stream: TcpStream,
        event: String,
        posted: mpsc::Sender<(String, String)>,
        mut give_event: bool,
    ) {
        let mut stream = BufReader::new(stream);
        loop {
            let mut request_line = String::new();
            if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                return;
            }
            let mut length = 0;
            loop {
                let mut line = String::new();
                stream.read_line(&mut line).await.unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            stream.read_exact(&mut body).await.unwrap();
            let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_owned();
            if path.ends_with("/invocation/next") {
                let _ = posted.send((path.clone(), String::new())).await;
                if !give_event {
                    std::future::pending::<()>().await;
                }
                give_event = false;
                let deadline = now_ms() + 60_000;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLambda-Runtime-Aws-Request-Id: {REQUEST_ID}\r\n\
                     Lambda-Runtime-Deadline-Ms: {deadline}\r\nLambda-Runtime-Invoked-Function-Arn: \
                     arn:aws:lambda:us-east-1:123456789012:function:generator\r\nContent-Length: {}\r\n\r\n",
                    event.len()
                );
                stream.get_mut().write_all(head.as_bytes()).await.unwrap();
                stream.get_mut().write_all(event.as_bytes()).await.unwrap();
            } else {
                let _ = posted.send((path, String::from_utf8_lossy(&body).into_owned())).await;
                stream
                    .get_mut()
                    .write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}")
                    .await
                    .unwrap();
            }
        }
    }
}
