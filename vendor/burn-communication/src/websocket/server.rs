use std::net::SocketAddr;

use crate::{
    base::{CommunicationChannel, CommunicationError, Message, ProtocolServer},
    util::init_logging,
};
use axum::{
    Router,
    extract::{
        ConnectInfo, State, WebSocketUpgrade,
        ws::{self, WebSocket},
    },
    routing::get,
};
use futures::StreamExt;

use super::auth;

#[derive(Clone, Debug)]
pub struct WsServer {
    port: u16,
    router: Router<()>,
}

pub struct WsServerChannel {
    inner: WebSocket,
}

impl WsServer {
    pub fn new(port: u16) -> Self {
        Self {
            port,
            router: Router::new(),
        }
    }
}

impl ProtocolServer for WsServer {
    type Channel = WsServerChannel;
    type Error = WsServerError;

    async fn serve<F>(self, shutdown: F) -> Result<(), Self::Error>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        init_logging();

        // Patched (fp8-trainer): the host the job names (`auth::set_bind_host`, loopback by
        // default), not every interface.
        let host = auth::bind_host();
        let address = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{}", self.port)
        } else {
            format!("{host}:{}", self.port)
        };
        log::info!("Starting server {address}");

        let listener = tokio::net::TcpListener::bind(address).await?;

        axum::serve(
            listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await?;

        Ok(())
    }

    fn route<C, Fut>(mut self, path: &str, callback: C) -> Self
    where
        C: FnOnce(WsServerChannel) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // Format path: should start with a /
        let path = if path.starts_with("/") {
            path.to_owned()
        } else {
            format!("/{path}")
        };

        let method = get(
            |ws: WebSocketUpgrade, ConnectInfo(peer): ConnectInfo<SocketAddr>, _: State<()>| async move {
                ws.on_upgrade(async move |socket| {
                    // Patched (fp8-trainer): a peer that fails the handshake is closed before
                    // the route reads anything from it.
                    if let Some(socket) = accept(socket, peer).await {
                        callback(WsServerChannel { inner: socket }).await;
                    }
                })
            },
        );

        self.router = self.router.route(&path, method);

        self
    }
}

/// Patched (fp8-trainer): the server's side of the handshake (`auth`); `None` closes `socket`.
async fn accept(mut socket: WebSocket, peer: SocketAddr) -> Option<WebSocket> {
    let Some(secret) = auth::secret() else {
        return Some(socket);
    };
    let outcome = tokio::time::timeout(auth::HANDSHAKE_TIMEOUT, async {
        let challenge = auth::nonce()?;
        let sent = socket
            .send(ws::Message::Binary(challenge.to_vec().into()))
            .await;
        sent.map_err(|e| format!("cannot send the challenge: {e}"))?;
        let answer = match socket.next().await {
            Some(Ok(ws::Message::Binary(answer))) => answer,
            other => return Err(format!("no answer to the challenge ({})", describe(other))),
        };
        let proof = auth::server_check(secret, &challenge, &answer)?;
        let sent = socket.send(ws::Message::Binary(proof.into())).await;
        sent.map_err(|e| format!("cannot send the proof: {e}"))
    })
    .await;
    match outcome {
        Ok(Ok(())) => Some(socket),
        Ok(Err(why)) => {
            log::warn!("refused a connection from {peer}: {why}");
            None
        }
        Err(_) => {
            log::warn!(
                "refused a connection from {peer}: no handshake within {:?}",
                auth::HANDSHAKE_TIMEOUT
            );
            None
        }
    }
}

/// What came instead of a binary message, for a refusal's log line.
fn describe(message: Option<Result<ws::Message, axum::Error>>) -> String {
    match message {
        None => "the connection closed".into(),
        Some(Err(e)) => e.to_string(),
        Some(Ok(ws::Message::Close(_))) => "a close frame".into(),
        Some(Ok(_)) => "a message that is not binary".into(),
    }
}

impl CommunicationChannel for WsServerChannel {
    type Error = WsServerError;

    async fn send(&mut self, message: Message) -> Result<(), WsServerError> {
        self.inner.send(ws::Message::Binary(message.data)).await?;

        Ok(())
    }

    async fn recv(&mut self) -> Result<Option<Message>, WsServerError> {
        match self.inner.next().await {
            Some(next) => match next {
                Ok(ws::Message::Binary(data)) => Ok(Some(Message { data })),
                Ok(ws::Message::Close(_close_frame)) => Ok(None),
                Err(err) => Err(WsServerError::Axum(err)),
                msg => Err(WsServerError::UnknownMessage(format!("{msg:?}"))),
            },
            // Patched (fp8-trainer): the peer went away (was `todo!()`).
            None => Ok(None),
        }
    }

    async fn close(&mut self) -> Result<(), WsServerError> {
        let reason = "Peer is closing".to_string();

        self.inner
            .send(ws::Message::Close(Some(ws::CloseFrame {
                code: 1000, // code: Normal
                reason: reason.clone().into(),
            })))
            .await?;

        Ok(())
    }
}

#[derive(Debug)]
pub enum WsServerError {
    Io(std::io::Error),
    Axum(axum::Error),
    UnknownMessage(String),
    Other(String),
}

impl CommunicationError for WsServerError {}

impl From<std::io::Error> for WsServerError {
    fn from(err: std::io::Error) -> Self {
        Self::Io(err)
    }
}

impl From<axum::Error> for WsServerError {
    fn from(err: axum::Error) -> Self {
        Self::Axum(err)
    }
}
